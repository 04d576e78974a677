package kez

import (
	"strings"
	"testing"
)

// TestSafetyVector reproduces the "safety" vector: each key's 30 digits,
// the 60-digit number in either order, and its 12 groups.
func TestSafetyVector(t *testing.T) {
	v := loadLogVectors(t).Safety
	if v.Iterations != SafetyIterations {
		t.Fatalf("vector iterations %d", v.Iterations)
	}
	for _, c := range []struct{ primary, digits string }{{v.Alice, v.AliceDigits}, {v.Bob, v.BobDigits}} {
		pub, err := ParsePrimary(c.primary)
		if err != nil {
			t.Fatal(err)
		}
		if got := SafetyDigits(pub); got != c.digits {
			t.Errorf("digits of %s = %s, want %s", c.primary, got, c.digits)
		}
	}
	for _, pair := range [][2]string{{v.Alice, v.Bob}, {v.Bob, v.Alice}} {
		n, err := SafetyNumber(pair[0], pair[1])
		if err != nil || n != v.SafetyNumber {
			t.Errorf("SafetyNumber(%s, %s) = %s, %v", pair[0][:16], pair[1][:16], n, err)
		}
	}
	if g := SafetyGroups(v.SafetyNumber); strings.Join(g, " ") != strings.Join(v.Groups, " ") || len(g) != 12 {
		t.Errorf("groups %v", g)
	}
	if _, err := SafetyNumber(v.Alice, "ed25519:00"); err == nil {
		t.Error("a malformed key has a safety number")
	}
}
