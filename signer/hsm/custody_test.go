package hsm_test

import (
	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/hsm"
)

// *HSM is what the issuer service uses as its key custody.
var _ signer.Custody = (*hsm.HSM)(nil)
