package rp

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseRedemptionRecordHeader(t *testing.T) {
	cases := []struct {
		name   string
		values []string
		want   []Entry
		err    error
	}{
		{"absent", nil, nil, nil},
		{"empty", []string{""}, nil, nil},
		{"blank lines", []string{" ", "\t"}, nil, nil},
		{"one", []string{`"https://issuer.example";redemption-record="eyJ.a.b"`},
			[]Entry{{"https://issuer.example", "eyJ.a.b"}}, nil},
		{"two, other params ignored", []string{`"https://a.example";redemption-record="r1";x=1, "https://b.example";v=?1;redemption-record="r2"`},
			[]Entry{{"https://a.example", "r1"}, {"https://b.example", "r2"}}, nil},
		{"two field lines", []string{`"https://a.example";redemption-record="r1"`, `"https://b.example";redemption-record="r2"`},
			[]Entry{{"https://a.example", "r1"}, {"https://b.example", "r2"}}, nil},
		{"escapes", []string{`"https://a.example";redemption-record="q\"b\\"`},
			[]Entry{{"https://a.example", `q"b\`}}, nil},
		{"empty line among others", []string{"", `"https://a.example";redemption-record="r1"`},
			[]Entry{{"https://a.example", "r1"}}, nil},
		{"no parameter", []string{`"https://issuer.example"`}, nil, ErrMalformedHeader},
		{"empty record", []string{`"https://issuer.example";redemption-record=""`}, nil, ErrMalformedHeader},
		{"record as token", []string{`"https://issuer.example";redemption-record=eyJ`}, nil, ErrMalformedHeader},
		{"record as byte sequence", []string{`"https://issuer.example";redemption-record=:AAAA:`}, nil, ErrMalformedHeader},
		{"issuer as token", []string{`issuer;redemption-record="r"`}, nil, ErrMalformedHeader},
		{"empty issuer", []string{`"";redemption-record="r"`}, nil, ErrMalformedHeader},
		{"inner list", []string{`("https://a.example");redemption-record="r"`}, nil, ErrMalformedHeader},
		{"unquoted garbage", []string{`https://issuer.example;redemption-record="r"`}, nil, ErrMalformedHeader},
		{"trailing comma", []string{`"https://a.example";redemption-record="r",`}, nil, ErrMalformedHeader},
		{"unterminated string", []string{`"https://a.example";redemption-record="r`}, nil, ErrMalformedHeader},
		{"non-ASCII", []string{"\"https://a.example\";redemption-record=\"é\""}, nil, ErrMalformedHeader},
		{"dictionary", []string{`a="https://a.example"`}, nil, ErrMalformedHeader},
		{"max entries", []string{strings.Repeat(`"i";redemption-record="r", `, MaxHeaderEntries-1) + `"i";redemption-record="r"`},
			func() []Entry {
				var es []Entry
				for range MaxHeaderEntries {
					es = append(es, Entry{"i", "r"})
				}
				return es
			}(), nil},
		{"too many entries", []string{strings.Repeat(`"i";redemption-record="r", `, MaxHeaderEntries) + `"i";redemption-record="r"`}, nil, ErrMalformedHeader},
		{"too large", []string{`"https://a.example";redemption-record="` + strings.Repeat("a", MaxHeaderBytes) + `"`}, nil, ErrHeaderTooLarge},
		{"too large over lines", []string{strings.Repeat(" ", MaxHeaderBytes/2), strings.Repeat(" ", MaxHeaderBytes/2)}, nil, ErrHeaderTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRedemptionRecordHeader(tc.values...)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("want %v, got %v (%v)", tc.err, err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
		})
	}
	if !errors.Is(ErrHeaderTooLarge, ErrMalformedHeader) {
		t.Fatal("ErrHeaderTooLarge must also be ErrMalformedHeader")
	}
}

func TestFormatRedemptionRecordHeader(t *testing.T) {
	got, err := FormatRedemptionRecordHeader([]Entry{{"https://a.example", "r1"}, {"https://b.example", "r2"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `"https://a.example";redemption-record="r1", "https://b.example";redemption-record="r2"`
	if got != want {
		t.Fatalf("got %s", got)
	}
	if _, err := FormatRedemptionRecordHeader([]Entry{{"https://a.example", "\n"}}); err == nil {
		t.Fatal("a control character formatted into an sf-string")
	}
}

func FuzzParseRedemptionRecordHeader(f *testing.F) {
	for _, s := range []string{
		"",
		`"https://issuer.example";redemption-record="eyJhbGciOiJFUzI1NiJ9.e30.AAAA"`,
		`"https://a.example";redemption-record="r1";x=1, "https://b.example";v=?1;redemption-record="r2"`,
		`"https://a.example";redemption-record="q\"b\\"`,
		`("https://a.example");redemption-record="r"`,
		`"https://a.example";redemption-record=:AAAA:`,
		`"x";redemption-record="y", `,
		`"x";redemption-record="y";redemption-record="z"`,
		`1;a=2.5, ?0, @1700000000, %"caf%c3%a9"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := ParseRedemptionRecordHeader(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedHeader) {
				t.Fatalf("error of the wrong kind: %v", err)
			}
			return
		}
		for _, e := range entries {
			if e.Issuer == "" || e.Record == "" {
				t.Fatalf("empty field in %#v", e)
			}
		}
		// What parses must serialise and parse back to the same entries.
		out, err := FormatRedemptionRecordHeader(entries)
		if err != nil {
			t.Fatalf("parsed entries do not format: %v", err)
		}
		if len(out) > MaxHeaderBytes {
			return // formatting can add a space per comma
		}
		again, err := ParseRedemptionRecordHeader(out)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", out, err)
		}
		if len(entries) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(entries, again) {
			t.Fatalf("round trip\n got %#v\nwant %#v", again, entries)
		}
	})
}
