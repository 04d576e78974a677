package testcaddy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ReadmeSection is the README from heading (e.g. "## Try it") up to the next
// heading of the same or a higher level, so tests can run what the README says.
func ReadmeSection(t testing.TB, heading string) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("README has no %q section", heading)
	}
	level := strings.IndexByte(heading, ' ') // the number of #
	lines := strings.SplitAfter(text[start+1:], "\n")
	inCode := false // "# ..." in a shell block is a comment, not a heading
	for i, line := range lines[1:] {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if n := len(line) - len(strings.TrimLeft(line, "#")); !inCode && n > 0 && n <= level && strings.HasPrefix(line[n:], " ") {
			return strings.Join(lines[:i+1], "")
		}
	}
	return text[start+1:]
}
