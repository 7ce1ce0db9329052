package voprf

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// ProtocolVersion is the PST v1 VOPRF protocol string, used as the crypto
// version header value and as the commitment's key.
const ProtocolVersion = "PrivateStateTokenV1VOPRF"

// Commitment is the key commitment for one protocol (docs/PROTOCOL.md,
// "Keys and the key commitment").
type Commitment struct {
	ProtocolVersion string                  `json:"protocol_version"`
	ID              uint32                  `json:"id"`
	BatchSize       int                     `json:"batchsize"`
	Keys            map[string]CommittedKey `json:"keys"`
}

// CommittedKey is one published key: Y is the base64 public key blob and
// Expiry a string of decimal microseconds since the Unix epoch.
type CommittedKey struct {
	Y      string `json:"Y"`
	Expiry string `json:"expiry"`
}

// PublishedKey is a key as the commitment builder takes it.
type PublishedKey struct {
	Public *PublicKey
	Expiry time.Time
}

// BuildCommitment renders {"PrivateStateTokenV1VOPRF": {...}} for the keys.
// Chrome wants id > 0, batchsize in [1, 100], at most 6 keys, key ids as
// decimal string labels and expiry as a string of microseconds.
func BuildCommitment(id uint32, batchSize int, keys []PublishedKey) ([]byte, error) {
	if id == 0 {
		return nil, errors.New("commitment id must be positive")
	}
	if batchSize < 1 || batchSize > MaxBatchSize {
		return nil, fmt.Errorf("batch size %d outside [1, %d]", batchSize, MaxBatchSize)
	}
	if len(keys) == 0 || len(keys) > 6 {
		return nil, fmt.Errorf("a commitment needs 1 to 6 keys, not %d", len(keys))
	}
	c := Commitment{ProtocolVersion: ProtocolVersion, ID: id, BatchSize: batchSize, Keys: map[string]CommittedKey{}}
	for _, k := range keys {
		c.Keys[strconv.FormatUint(uint64(k.Public.KeyID), 10)] = CommittedKey{
			Y:      base64.StdEncoding.EncodeToString(k.Public.MarshalBlob()),
			Expiry: strconv.FormatInt(k.Expiry.UnixMicro(), 10),
		}
	}
	// encoding/json sorts map keys, so the body is deterministic.
	return json.Marshal(map[string]Commitment{ProtocolVersion: c})
}

// ParseCommitment parses a commitment body (the object keyed by protocol
// version) and checks every key blob.
func ParseCommitment(b []byte) (*Commitment, map[uint32]*PublicKey, error) {
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(b, &outer); err != nil {
		return nil, nil, newError(Malformed, "commitment is not a JSON object")
	}
	raw, ok := outer[ProtocolVersion]
	if !ok {
		return nil, nil, newError(Unsupported, "commitment has no %s entry", ProtocolVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var c Commitment
	if err := dec.Decode(&c); err != nil {
		return nil, nil, newError(Malformed, "commitment entry does not parse")
	}
	if c.ProtocolVersion != ProtocolVersion || c.ID == 0 || c.BatchSize < 1 || c.BatchSize > MaxBatchSize || len(c.Keys) == 0 || len(c.Keys) > 6 {
		return nil, nil, newError(Malformed, "commitment fields out of range")
	}
	keys := map[uint32]*PublicKey{}
	for label, k := range c.Keys {
		id, err := strconv.ParseUint(label, 10, 32)
		if err != nil {
			return nil, nil, newError(Malformed, "key label %q is not a uint32", label)
		}
		blob, err := base64.StdEncoding.Strict().DecodeString(k.Y)
		if err != nil {
			return nil, nil, newError(Malformed, "key %s: Y is not base64", label)
		}
		pk, err := ParsePublicKeyBlob(blob)
		if err != nil {
			return nil, nil, err
		}
		if pk.KeyID != uint32(id) {
			return nil, nil, newError(Malformed, "key %s: blob names key %d", label, pk.KeyID)
		}
		if _, err := strconv.ParseInt(k.Expiry, 10, 64); err != nil {
			return nil, nil, newError(Malformed, "key %s: expiry is not a decimal string", label)
		}
		keys[pk.KeyID] = pk
	}
	return &c, keys, nil
}

// SortedKeyIDs returns the map's key ids in ascending order.
func SortedKeyIDs(keys map[uint32]*PublicKey) []uint32 {
	ids := make([]uint32, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}
