package signer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// RecordType is the JWS "typ" of a pstd redemption record.
const RecordType = "pst-rr+jwt"

// RecordClaims are the claims of a redemption record (docs/ARCHITECTURE.md).
type RecordClaims struct {
	jwt.Claims
	KeyID          uint32 `json:"pst_key_id"`
	RedemptionTime int64  `json:"pst_redemption_time"`
}

// RRKey is a redemption-record signing key: a P-256 crypto.Signer whose
// private half stays in the HSM, with its JWKS key id.
type RRKey struct {
	KID    string
	Signer crypto.Signer
}

// opaque adapts an HSM-held crypto.Signer (which returns ASN.1 DER) to
// go-jose's OpaqueSigner (which wants JWS's fixed-size r||s).
type opaque struct{ k RRKey }

func (o opaque) Public() *jose.JSONWebKey {
	return &jose.JSONWebKey{Key: o.k.Signer.Public(), KeyID: o.k.KID, Algorithm: string(jose.ES256), Use: "sig"}
}

func (o opaque) Algs() []jose.SignatureAlgorithm { return []jose.SignatureAlgorithm{jose.ES256} }

func (o opaque) SignPayload(payload []byte, alg jose.SignatureAlgorithm) ([]byte, error) {
	if alg != jose.ES256 {
		return nil, fmt.Errorf("redemption-record key signs ES256 only, not %s", alg)
	}
	digest := sha256.Sum256(payload)
	der, err := o.k.Signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	var sig struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) != 0 {
		return nil, errors.New("HSM returned a malformed ECDSA signature")
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, nil
}

// SignRecord builds the compact JWS of a redemption record.
func SignRecord(k RRKey, c RecordClaims) (string, error) {
	pub, ok := k.Signer.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return "", errors.New("redemption-record key is not ECDSA P-256")
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: opaque{k}},
		(&jose.SignerOptions{}).WithType(RecordType).WithHeader(jose.HeaderKey("kid"), k.KID))
	if err != nil {
		return "", err
	}
	return jwt.Signed(s).Claims(c).Serialize()
}

// NewRecordClaims fills the claims of a record for one redemption.
func NewRecordClaims(issuer, audience string, keyID uint32, redemptionTime, now time.Time, lifetime time.Duration) (RecordClaims, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return RecordClaims{}, err
	}
	return RecordClaims{
		Claims: jwt.Claims{
			Issuer:   issuer,
			Audience: jwt.Audience{audience},
			IssuedAt: jwt.NewNumericDate(now),
			Expiry:   jwt.NewNumericDate(now.Add(lifetime)),
			ID:       base64.RawURLEncoding.EncodeToString(id),
		},
		KeyID:          keyID,
		RedemptionTime: redemptionTime.Unix(),
	}, nil
}

// JWKS renders the public redemption-record keys as a JSON Web Key Set.
func JWKS(keys []RRKey) ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, k := range keys {
		set.Keys = append(set.Keys, *opaque{k}.Public())
	}
	return json.Marshal(set)
}
