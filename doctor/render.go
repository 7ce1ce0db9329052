package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable renders the report for a terminal: one line per check, the fix
// indented under each check that did not pass, and a summary.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "pstctl doctor %s (%s)\n\n", r.Issuer, r.Time.Format("2006-01-02 15:04:05Z"))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tRESULT")
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", strings.ToUpper(string(c.Status)), c.ID, oneLine(c.Message))
		if c.Fix != "" && (c.Status == StatusFail || c.Status == StatusWarn) {
			fmt.Fprintf(tw, "\t\t→ fix: %s\n", oneLine(c.Fix))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "OK"
	if !r.Summary.OK {
		verdict = "FAILED"
	}
	_, err := fmt.Fprintf(w, "\n%s: %d passed, %d warnings, %d failed, %d skipped\n",
		verdict, r.Summary.Pass, r.Summary.Warn, r.Summary.Fail, r.Summary.Skip)
	return err
}

// WriteJSON renders the report as one indented JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Write renders the report in format "table" or "json".
func (r *Report) Write(w io.Writer, format string) error {
	switch format {
	case "", "table":
		return r.WriteTable(w)
	case "json":
		return r.WriteJSON(w)
	}
	return &UsageError{fmt.Sprintf("--format %q: use table or json", format)}
}

// oneLine keeps a message on one table row: an issuer's text could hold
// newlines or terminal control characters.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return ' '
		}
		return r
	}, s)
}
