package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/storage/bolt"
)

// loopDisk is a small ext4 file system on a loop device, mounted with
// errors=remount-ro: on its first error the kernel makes it read-only under
// the running server, which is what a production disk does after an I/O
// error. (A read-only bind mount cannot stand in: the kernel refuses to
// remount it while the database is open for writing.)
type loopDisk struct {
	image, dir string
}

// newLoopDisk mounts a fresh 64 MiB ext4 image, or skips the test where
// that needs privileges or tools this machine lacks.
func newLoopDisk(t *testing.T) *loopDisk {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a loop device needs root")
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount", "findmnt", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	tmp := t.TempDir()
	d := &loopDisk{image: filepath.Join(tmp, "disk.img"), dir: filepath.Join(tmp, "mnt")}
	if err := os.Mkdir(d.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "truncate", "-s", "64M", d.image)
	run(t, "mkfs.ext4", "-q", d.image)
	if out, err := exec.Command("mount", "-o", "loop,errors=remount-ro", d.image, d.dir).CombinedOutput(); err != nil {
		t.Skipf("this machine cannot mount a loop device: %v %s", err, out)
	}
	t.Cleanup(d.unmount) // runs after Caddy, started later, is stopped
	return d
}

func (d *loopDisk) unmount() {
	if exec.Command("umount", d.dir).Run() != nil {
		_ = exec.Command("umount", "-l", d.dir).Run()
	}
}

// fail makes the file system report an error, which remounts it read-only.
func (d *loopDisk) fail(t *testing.T) {
	t.Helper()
	dev := strings.TrimSpace(run(t, "findmnt", "-n", "-o", "SOURCE", d.dir))
	trigger := filepath.Join("/sys/fs/ext4", filepath.Base(dev), "trigger_fs_error")
	if err := os.WriteFile(trigger, []byte("kez read-only disk test\n"), 0o200); err != nil {
		t.Skipf("this kernel cannot inject an ext4 error (%v)", err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "probe"), nil, 0o600); !errors.Is(err, os.ErrPermission) && !strings.Contains(fmt.Sprint(err), "read-only") {
		t.Fatalf("the disk still takes writes after the injected error: %v", err)
	}
}

// repair unmounts, checks and mounts the disk again writable, as an
// operator would after replacing or fixing it.
func (d *loopDisk) repair(t *testing.T) {
	t.Helper()
	run(t, "umount", d.dir)
	// e2fsck exits 1 when it corrected something (here: the error flag).
	if out, err := exec.Command("e2fsck", "-fy", d.image).CombinedOutput(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() > 1 {
			t.Fatalf("e2fsck: %v\n%s", err, out)
		}
	}
	run(t, "mount", "-o", "loop,errors=remount-ro", d.image, d.dir)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestReadOnlyDisk: the disk turns read-only under a running server. Writes
// answer 503 unavailable, reads keep working, nothing acknowledged is lost,
// a start on the read-only disk fails with an error that says why, and after
// the disk is repaired the server carries on with every message intact.
func TestReadOnlyDisk(t *testing.T) {
	t.Parallel()
	disk := newLoopDisk(t)
	dbPath := filepath.Join(disk.dir, "chat.db")
	opts := testcaddy.Options{Storage: "storage bolt " + dbPath}
	srv := testcaddy.Start(t, opts)
	alice, bob := newUser("alice"), newUser("bob")
	want(t, "register", register(t, srv, alice), 201, "")
	var sent []uint64
	for i := range 20 {
		sent = append(sent, send(t, srv, "alice", fmt.Sprintf(`{"n":%d}`, i)))
	}

	disk.fail(t)
	for i := range 5 {
		r := sendAs(t, srv.URL, defaultSender(t, srv.URL), "alice", fmt.Sprintf(`{"late":%d}`, i))
		want(t, "send to a read-only disk", r, 503, "unavailable")
	}
	want(t, "register on a read-only disk", register(t, srv, bob), 503, "unavailable")
	want(t, "acknowledge on a read-only disk",
		signed(t, srv.URL, alice, "DELETE", fmt.Sprintf("/v1/inbox/alice?upto=%d", sent[len(sent)-1]), ""), 503, "unavailable")
	want(t, "lookup on a read-only disk", do(t, "GET", srv.URL+"/v1/u/alice", ""), 200, "")
	var got []uint64
	for _, m := range allInbox(t, srv, alice) {
		got = append(got, m.Seq)
	}
	checkExactlyOnce(t, got, sent)

	// Starting on the read-only disk fails, naming the file and the cause.
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := srv.CLI(ctx, "validate", "--config", filepath.Join(srv.Dir, "Caddyfile"), "--adapter", "caddyfile")
	if err == nil || !strings.Contains(out, dbPath) || !strings.Contains(out, "read-only file system") {
		t.Fatalf("caddy validate on a read-only disk: %v\n%s", err, out)
	}

	disk.repair(t)
	if err := bolt.Check(dbPath, 5*time.Second); err != nil {
		t.Fatalf("database inconsistent after the disk failed: %v", err)
	}
	srv.Start(t, opts)
	got = got[:0]
	for _, m := range allInbox(t, srv, alice) {
		got = append(got, m.Seq)
	}
	checkExactlyOnce(t, got, sent)
	want(t, "register after repair", register(t, srv, bob), 201, "")
	if seq := send(t, srv, "alice", `{"after":"repair"}`); seq <= sent[len(sent)-1] {
		t.Fatalf("seq %d after repair is not past %d", seq, sent[len(sent)-1])
	}
}
