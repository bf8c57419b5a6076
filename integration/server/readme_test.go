package server

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// readmeBlocks returns the fenced code blocks of one README section, in
// order, as language and text.
func readmeBlocks(t *testing.T, heading string) (langs, blocks []string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README.md has no %q section", heading)
	}
	text = text[i+len(heading)+2:]
	if j := regexp.MustCompile(`\n##+ `).FindStringIndex(text); j != nil {
		text = text[:j[0]]
	}
	for _, m := range regexp.MustCompile("(?ms)^```([a-z]*)\n(.*?)^```$").FindAllStringSubmatch(text, -1) {
		langs, blocks = append(langs, m[1]), append(blocks, m[2])
	}
	return langs, blocks
}

// shellCommands are a sh block's commands: comment lines dropped, lines
// ending in a backslash joined with the next.
func shellCommands(block string) []string {
	var out []string
	cur := ""
	for line := range strings.SplitSeq(block, "\n") {
		if cur == "" && (strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#")) {
			continue
		}
		if rest, ok := strings.CutSuffix(line, `\`); ok {
			cur += rest
			continue
		}
		out = append(out, cur+line)
		cur = ""
	}
	return out
}

// TestREADME_APIFromAnyLanguage runs the curl lines and the Python agent
// of README's "The API from any language" exactly as printed, against a
// latch whose SVID carries a DNS name as the README says to give it, in a
// directory holding the agent's SVID files under the names spire-agent
// writes. The README's first block says which variables to set; the test
// sets those. And the Python agent refuses a server that is not latch.
func TestREADME_APIFromAnyLanguage(t *testing.T) {
	for _, tool := range []string{"curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run make tools (it installs it from Debian)", tool)
		}
	}
	langs, blocks := readmeBlocks(t, "### The API from any language")
	if !slices.Equal(langs, []string{"sh", "sh", "python"}) {
		t.Fatalf("README's API section has blocks %q, want the variables (sh), the curl lines (sh) and the Python agent", langs)
	}
	l := startLatchWith(t, latchOptions{DNSNames: []string{"localhost"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const agent = "spiffe://example.org/agent/report-bot"
	work := t.TempDir()
	svid, err := st.SPIRE.MintX509SVID(ctx, spiffeid.RequireFromString(agent), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(work, "svid.0.pem"), svid.CertPEM)
	writeFile(t, filepath.Join(work, "svid.0.key"), svid.KeyPEM)
	writeFile(t, filepath.Join(work, "bundle.0.pem"), svid.BundlePEM)
	jwt, err := st.SPIRE.MintJWTSVID(ctx, spiffeid.RequireFromString(agent), 5*time.Minute, latchID.String())
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(l.api)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"LATCH_ADDR":   "https://" + net.JoinHostPort("localhost", u.Port()),
		"LATCH_SOCKET": l.socket,
	}
	var exported []string
	for _, c := range shellCommands(blocks[0]) {
		name, _, _ := strings.Cut(strings.TrimPrefix(c, "export "), "=")
		exported = append(exported, name)
	}
	if slices.Sort(exported); !slices.Equal(exported, []string{"LATCH_ADDR", "LATCH_SOCKET"}) {
		t.Fatalf("README's first block sets %v; this test sets LATCH_ADDR and LATCH_SOCKET", exported)
	}
	env["JWT_SVID"] = jwt

	commands := shellCommands(blocks[1])
	if len(commands) != 5 {
		t.Fatalf("README's curl block has %d commands, want 5:\n%s", len(commands), strings.Join(commands, "\n"))
	}
	for i, c := range commands {
		out := runIn(t, work, env, "bash", "-c", c)
		if i == 0 { // the credentials request: its lease is the one released next
			var res struct {
				Lease  struct{ ID string }
				Secret map[string]string
			}
			if err := json.Unmarshal(out, &res); err != nil || res.Lease.ID == "" || res.Secret["token"] == "" {
				t.Fatalf("%s\nanswered %s", c, out)
			}
			env["LEASE_ID"] = res.Lease.ID
			continue
		}
		if strings.Contains(string(out), `"error"`) {
			t.Fatalf("%s\nanswered %s", c, out)
		}
	}
	if lease, err := l.admin().Lease(ctx, env["LEASE_ID"]); err != nil || lease.State == "active" {
		t.Fatalf("the lease the curl line released: %+v, %v", lease, err)
	}

	script := filepath.Join(work, "agent.py")
	writeFile(t, script, []byte(blocks[2]))
	if out := runIn(t, work, env, "python3", script); !strings.HasPrefix(string(out), "lease ") {
		t.Fatalf("the Python agent printed %q", out)
	}
	// The same agent, expecting another server, refuses latch.
	impostor := strings.Replace(blocks[2], `"spiffe://example.org/latch"`, `"spiffe://example.org/someone-else"`, 1)
	writeFile(t, script, []byte(impostor))
	cmd := exec.Command("python3", script)
	cmd.Dir, cmd.Env = work, environ(env)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "the server is not spiffe://example.org/someone-else") {
		t.Fatalf("the Python agent expecting another SPIFFE ID: %v, %s", err, out)
	}
}

// runIn runs a command in dir with env added and returns its stdout; it
// must succeed.
func runIn(t *testing.T, dir string, env map[string]string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env = dir, environ(env)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %q: %v\nstdout: %s\nstderr: %s", name, args, err, out, stderr.String())
	}
	return out
}

func environ(env map[string]string) []string {
	out := os.Environ()
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}
