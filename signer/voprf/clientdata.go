package voprf

import (
	"net/url"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// ClientData is Chrome's redemption client data: a CBOR map with
// "redeeming-origin" (text) and "redemption-timestamp" (seconds since the
// Unix epoch).
type ClientData struct {
	RedeemingOrigin     string `cbor:"redeeming-origin"`
	RedemptionTimestamp uint64 `cbor:"redemption-timestamp"`
}

// Time returns the redemption timestamp as a time.Time.
func (cd *ClientData) Time() time.Time {
	return time.Unix(int64(min(cd.RedemptionTimestamp, 1<<62)), 0).UTC()
}

var clientDataDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   4,
		MaxArrayElements:  16,
		MaxMapPairs:       16,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorNone,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

var clientDataEncMode = func() cbor.EncMode {
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	return em
}()

// ParseClientData decodes and checks Chrome's CBOR client data. Unknown map
// entries are ignored (a later Chrome may add some); both known entries are
// required and the origin must be a serialised origin.
func ParseClientData(b []byte) (*ClientData, error) {
	if len(b) == 0 || len(b) > MaxClientDataSize {
		return nil, newError(Malformed, "client data is empty or exceeds %d bytes", MaxClientDataSize)
	}
	var cd ClientData
	if err := clientDataDecMode.Unmarshal(b, &cd); err != nil {
		return nil, newError(Malformed, "client data is not a CBOR map of the expected shape")
	}
	if cd.RedeemingOrigin == "" {
		return nil, newError(Malformed, "client data has no redeeming-origin")
	}
	if cd.RedemptionTimestamp == 0 {
		return nil, newError(Malformed, "client data has no redemption-timestamp")
	}
	if !isOrigin(cd.RedeemingOrigin) {
		return nil, newError(Malformed, "redeeming-origin is not an origin")
	}
	return &cd, nil
}

// isOrigin reports whether s is a serialised http(s) origin: scheme://host[:port]
// with nothing else.
func isOrigin(s string) bool {
	if len(s) > 512 {
		return false
	}
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	return (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" && u.User == nil &&
		u.Path == "" && u.RawQuery == "" && u.Fragment == "" && !u.ForceQuery && u.Opaque == ""
}

// MarshalClientData encodes client data as Chrome does (deterministic CBOR).
func MarshalClientData(cd *ClientData) ([]byte, error) {
	return clientDataEncMode.Marshal(cd)
}
