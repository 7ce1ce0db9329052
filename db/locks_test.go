package db

import "testing"

// Two purposes sharing an advisory lock number would serialise unrelated
// work and can deadlock (each lock order assumes distinct locks).
func TestAdvisoryLockNumbersDistinct(t *testing.T) {
	seen := map[int]string{}
	for name, n := range map[string]int{
		"rotation": lockRotation, "audit": lockAudit, "commitment": lockCommitment, "provision": lockProvision,
	} {
		if other, dup := seen[n]; dup {
			t.Fatalf("advisory lock %d is both %s and %s", n, other, name)
		}
		seen[n] = name
	}
}
