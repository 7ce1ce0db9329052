package rp

import (
	"fmt"
	"strings"

	"github.com/dunglas/httpsfv"
)

const (
	// HeaderName is the request header in which the browser hands a site the
	// redemption records it asked for (send-redemption-record).
	HeaderName = "Sec-Redemption-Record"
	// RecordParam is the list-item parameter holding one record.
	RecordParam = "redemption-record"
	// MaxHeaderBytes bounds the header before parsing. A pstd record is about
	// 600 bytes and Chrome lets a page use at most 2 issuers, so 16 KiB is far
	// above any honest header while keeping parse and verify work small.
	MaxHeaderBytes = 16 << 10
	// MaxHeaderEntries bounds the list. Chrome lets a top-level site use at
	// most 2 issuers; the bound stops a client from making the RP check ~100
	// signatures per request within MaxHeaderBytes.
	MaxHeaderEntries = 8
)

// Entry is one (issuer origin, record) pair of a Sec-Redemption-Record header.
// Record is untrusted until a Verifier has checked it.
type Entry struct {
	Issuer string
	Record string
}

// ParseRedemptionRecordHeader parses the values of a Sec-Redemption-Record
// header (pass r.Header.Values(HeaderName)... ; several field lines are
// combined as RFC 9110 says). An absent or empty header is an empty list.
//
// The parse is strict: every list member must be an sf-string item (the
// issuer origin) with an sf-string redemption-record parameter; other
// parameters are ignored. Any violation makes the whole header
// ErrMalformedHeader, because Chrome never produces one.
func ParseRedemptionRecordHeader(values ...string) ([]Entry, error) {
	total := 0
	lines := make([]string, 0, len(values))
	for _, v := range values {
		total += len(v) + 2 // + the ", " that joins field lines
		if total > MaxHeaderBytes+2 {
			return nil, ErrHeaderTooLarge
		}
		// An empty field line adds nothing to a list (and would otherwise
		// leave a dangling comma after joining).
		if strings.Trim(v, " \t") != "" {
			lines = append(lines, v)
		}
	}
	if len(lines) == 0 {
		return nil, nil
	}
	list, err := httpsfv.UnmarshalList(lines)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedHeader, err)
	}
	if len(list) > MaxHeaderEntries {
		return nil, fmt.Errorf("%w: %d entries, more than %d", ErrMalformedHeader, len(list), MaxHeaderEntries)
	}
	entries := make([]Entry, 0, len(list))
	for i, m := range list {
		item, ok := m.(httpsfv.Item)
		if !ok {
			return nil, fmt.Errorf("%w: member %d is an inner list", ErrMalformedHeader, i)
		}
		issuer, ok := item.Value.(string)
		if !ok || issuer == "" {
			return nil, fmt.Errorf("%w: member %d is not a non-empty sf-string issuer origin", ErrMalformedHeader, i)
		}
		var rec string
		if item.Params != nil {
			v, _ := item.Params.Get(RecordParam)
			rec, _ = v.(string)
		}
		if rec == "" {
			return nil, fmt.Errorf("%w: member %d has no sf-string %s parameter", ErrMalformedHeader, i, RecordParam)
		}
		entries = append(entries, Entry{Issuer: issuer, Record: rec})
	}
	return entries, nil
}

// FormatRedemptionRecordHeader serialises entries the way a browser does,
// e.g. for tests or tools that stand in for a browser.
func FormatRedemptionRecordHeader(entries []Entry) (string, error) {
	list := make(httpsfv.List, 0, len(entries))
	for _, e := range entries {
		item := httpsfv.NewItem(e.Issuer)
		item.Params.Add(RecordParam, e.Record)
		list = append(list, item)
	}
	return httpsfv.Marshal(list)
}
