package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/kezchat/kez/internal/testcaddy"
)

// The README's curl walkthrough works as written (only the address changes).
func TestReadmeCurlWalkthrough(t *testing.T) {
	for _, tool := range []string{"openssl", "curl", "od", "bash", "timeout"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README walkthrough needs %s: %v", tool, err)
		}
	}
	block := readmeSection(t, "### A walkthrough with curl")
	block = block[strings.Index(block, "```sh\n")+6:]
	block = block[:strings.Index(block, "```")]

	srv := testcaddy.Start(t, testcaddy.Options{ServerName: "localhost"})
	script := strings.ReplaceAll(block, "localhost:8080", strings.TrimPrefix(srv.URL, "http://"))
	// The stream runs until Ctrl-C; here, for two seconds.
	script = strings.ReplaceAll(script, "curl -sN", "timeout 2 curl -sN")
	script = strings.ReplaceAll(script, "\ncurl ", "\necho; curl ")
	dir := t.TempDir()
	cmd := exec.Command("bash", "-c", script+"\necho")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		`"address":"alice@localhost"`,
		`{"seq":1,"to":"alice","received_at":`,
		`{"messages":[{"seq":1,"from":"ed25519:`,
		`"from_addr":"bob@localhost","request":true,"envelope":{"v":1,"from":"ed25519:`,
		"\n204\n",
		"retry: 3000\n\nid: 1\nevent: message\ndata: {\"seq\":1,",
		`"request":false,"envelope":{"v":1,`,
		`{"deleted":1}`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("walkthrough output lacks %q\n%s", want, out)
		}
	}
}
