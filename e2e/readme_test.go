package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kezchat/kez/internal/testcaddy"
)

// The README's curl walkthrough works as written (only the address changes).
func TestReadmeCurlWalkthrough(t *testing.T) {
	t.Parallel()
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

// The two Caddyfiles of README's "Talk to other servers" run as written
// (on free ports instead of 8081 and 8082) and their users write to each
// other.
func TestReadmeFederationExamples(t *testing.T) {
	t.Parallel()
	section := readmeSection(t, "## Talk to other servers")
	root, err := testcaddy.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	addrs := map[string]string{"one": "127.0.0.1:1", "two": "127.0.0.1:1"} // filled in as they start
	for _, name := range []string{"one", "two"} {
		path := "examples/federation/" + name + ".Caddyfile"
		if !strings.Contains(section, "--config "+path) {
			t.Fatalf("README section does not start %s", path)
		}
		data, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = string(data)
	}
	config := func(name, other, adminPort string) func(s *testcaddy.Server) string {
		return func(s *testcaddy.Server) string {
			text := strings.ReplaceAll(files[name], "localhost:"+adminPort, s.AdminAddr)
			ports := map[string]string{"one": "127.0.0.1:8081", "two": "127.0.0.1:8082"}
			text = strings.ReplaceAll(text, ports[name], strings.TrimPrefix(s.URL, "http://"))
			return strings.ReplaceAll(text, ports[other], addrs[other])
		}
	}
	one := testcaddy.Start(t, testcaddy.Options{Config: config("one", "two", "2021")})
	addrs["one"] = strings.TrimPrefix(one.URL, "http://")
	two := testcaddy.Start(t, testcaddy.Options{Config: config("two", "one", "2022")})
	addrs["two"] = strings.TrimPrefix(two.URL, "http://")
	one.Reload(t, one.Opts)

	alice, bob := newUser("alice"), newUser("bob")
	want(t, "register alice", register(t, one, alice), 201, "")
	want(t, "register bob", register(t, two, bob), 201, "")
	want(t, "alice@one.localhost → bob", remoteSend(t, two.URL, alice, "alice@one.localhost", "bob", `{}`), 201, "")
	want(t, "bob@two.localhost → alice", remoteSend(t, one.URL, bob, "bob@two.localhost", "alice", `{}`), 201, "")
	if msgs := allInbox(t, two, bob); len(msgs) != 1 || msgs[0].FromAddr != "alice@one.localhost" || !msgs[0].Request {
		t.Fatalf("bob's inbox: %+v", msgs)
	}
}
