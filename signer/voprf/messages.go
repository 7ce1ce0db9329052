package voprf

import (
	"encoding/binary"

	"github.com/pstd/pstd/signer/voprf/internal/p384"
)

// IssueRequest is a parsed issue request: u16(count) || count × B_i[97].
type IssueRequest struct {
	// Blinded holds the wire encodings of the blinded elements, each checked
	// to be a valid non-identity point.
	Blinded [][]byte
	points  []*p384.Point
}

// Count returns the number of blinded elements the client sent.
func (r *IssueRequest) Count() int { return len(r.Blinded) }

// ParseIssueRequest parses and validates an issue request. A count of 0 or
// above MaxBatchSize, a length that does not match the count, or any element
// that is not a valid point is an error.
func ParseIssueRequest(b []byte) (*IssueRequest, error) {
	if len(b) < 2 {
		return nil, newError(Malformed, "issue request shorter than its count")
	}
	count := int(binary.BigEndian.Uint16(b))
	if count == 0 {
		return nil, newError(BadCount, "issue request count is 0")
	}
	if count > MaxBatchSize {
		return nil, newError(BadCount, "issue request count %d exceeds the maximum batch size %d", count, MaxBatchSize)
	}
	if len(b) != 2+count*ElementSize {
		return nil, newError(Malformed, "issue request is %d bytes, want %d for count %d", len(b), 2+count*ElementSize, count)
	}
	req := &IssueRequest{Blinded: make([][]byte, count), points: make([]*p384.Point, count)}
	for i := range count {
		e := b[2+i*ElementSize : 2+(i+1)*ElementSize]
		p, err := parseElement(e)
		if err != nil {
			return nil, newError(BadPoint, "blinded element %d is not a valid point", i)
		}
		req.Blinded[i] = e
		req.points[i] = p
	}
	return req, nil
}

// MarshalIssueRequest builds u16(count) || B_i... from uncompressed elements.
func MarshalIssueRequest(blinded [][]byte) []byte {
	out := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(blinded)*ElementSize), uint16(len(blinded)))
	for _, e := range blinded {
		out = append(out, e...)
	}
	return out
}

// IssueResponse is a parsed issue response:
// u16(issued) || u32(key_id) || issued × Z_i[97] || u16(96) || c[48] || s[48].
type IssueResponse struct {
	KeyID     uint32
	Evaluated [][]byte
	Proof     [ProofSize]byte
	points    []*p384.Point
}

// ParseIssueResponse parses and validates an issue response (client side).
func ParseIssueResponse(b []byte) (*IssueResponse, error) {
	if len(b) < 6 {
		return nil, newError(Malformed, "issue response too short")
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > MaxBatchSize {
		return nil, newError(BadCount, "issue response count %d exceeds the maximum batch size", n)
	}
	want := 2 + 4 + n*ElementSize + 2 + ProofSize
	if len(b) != want {
		return nil, newError(Malformed, "issue response is %d bytes, want %d for count %d", len(b), want, n)
	}
	resp := &IssueResponse{KeyID: binary.BigEndian.Uint32(b[2:]), Evaluated: make([][]byte, n), points: make([]*p384.Point, n)}
	off := 6
	for i := range n {
		e := b[off : off+ElementSize]
		p, err := parseElement(e)
		if err != nil {
			return nil, newError(BadPoint, "evaluated element %d is not a valid point", i)
		}
		resp.Evaluated[i], resp.points[i] = e, p
		off += ElementSize
	}
	if binary.BigEndian.Uint16(b[off:]) != ProofSize {
		return nil, newError(Malformed, "proof length is not 96")
	}
	copy(resp.Proof[:], b[off+2:])
	return resp, nil
}

// Token is an issued token: u32(key_id) || nonce[64] || W[97].
type Token struct {
	KeyID uint32
	Nonce [NonceSize]byte
	W     [ElementSize]byte
}

// ParseToken parses a 165-byte token and checks that W is a valid point.
func ParseToken(b []byte) (*Token, error) {
	if len(b) != TokenSize {
		return nil, newError(Malformed, "token is %d bytes, want %d", len(b), TokenSize)
	}
	t := &Token{KeyID: binary.BigEndian.Uint32(b)}
	copy(t.Nonce[:], b[4:4+NonceSize])
	copy(t.W[:], b[4+NonceSize:])
	if _, err := parseElement(t.W[:]); err != nil {
		return nil, newError(BadPoint, "token element W is not a valid point")
	}
	return t, nil
}

// Marshal returns the token's 165-byte wire form.
func (t *Token) Marshal() []byte {
	out := binary.BigEndian.AppendUint32(make([]byte, 0, TokenSize), t.KeyID)
	out = append(out, t.Nonce[:]...)
	return append(out, t.W[:]...)
}

// RedeemRequest is a parsed redemption request:
// u16(len) || token || u16(len) || client_data.
type RedeemRequest struct {
	Token      Token
	ClientData []byte
}

// ParseRedeemRequest parses a redemption request. The client data is returned
// as bytes; ParseClientData decodes Chrome's CBOR form.
func ParseRedeemRequest(b []byte) (*RedeemRequest, error) {
	if len(b) > MaxRedeemRequestSize {
		return nil, newError(Malformed, "redemption request exceeds %d bytes", MaxRedeemRequestSize)
	}
	if len(b) < 2 {
		return nil, newError(Malformed, "redemption request too short")
	}
	tl := int(binary.BigEndian.Uint16(b))
	if tl != TokenSize {
		return nil, newError(Malformed, "token length is %d, want %d", tl, TokenSize)
	}
	if len(b) < 2+tl+2 {
		return nil, newError(Malformed, "redemption request truncated")
	}
	tok, err := ParseToken(b[2 : 2+tl])
	if err != nil {
		return nil, err
	}
	rest := b[2+tl:]
	cl := int(binary.BigEndian.Uint16(rest))
	if cl > MaxClientDataSize {
		return nil, newError(Malformed, "client data exceeds %d bytes", MaxClientDataSize)
	}
	if len(rest) != 2+cl {
		return nil, newError(Malformed, "client data length does not match the request")
	}
	return &RedeemRequest{Token: *tok, ClientData: append([]byte(nil), rest[2:]...)}, nil
}

// MarshalRedeemRequest builds u16(165) || token || u16(len) || client_data.
func MarshalRedeemRequest(t *Token, clientData []byte) ([]byte, error) {
	if len(clientData) > MaxClientDataSize {
		return nil, newError(Malformed, "client data exceeds %d bytes", MaxClientDataSize)
	}
	out := make([]byte, 0, 2+TokenSize+2+len(clientData))
	out = appendLenPrefixed(out, t.Marshal())
	return appendLenPrefixed(out, clientData), nil
}
