package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TrustDomain is the SPIRE trust domain of the test stack.
var TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")

// SPIRE is a SPIRE server (sqlite datastore, join_token node attestation)
// and one agent joined to it, whose Workload API attests workloads with the
// unix attestor.
type SPIRE struct {
	ServerAddr     string      // 127.0.0.1:PORT
	ServerSocket   string      // the server's admin API socket (spire-server CLI)
	WorkloadSocket string      // the agent's Workload API socket path
	AgentID        spiffeid.ID // node alias of the agent; workload entries are parented to it

	serverBin, agentBin string
	dir                 string
	server, agent       *process
}

// WorkloadAPIAddr is the Workload API address in the form go-spiffe's
// workloadapi.WithAddr and SPIFFE_ENDPOINT_SOCKET take.
func (s *SPIRE) WorkloadAPIAddr() string { return "unix://" + s.WorkloadSocket }

func startSPIRE(ctx context.Context, dir string) (*SPIRE, error) {
	serverBin, err := tool("spire-server")
	if err != nil {
		return nil, err
	}
	agentBin, err := tool("spire-agent")
	if err != nil {
		return nil, err
	}
	port, err := FreePort(false)
	if err != nil {
		return nil, err
	}
	s := &SPIRE{
		ServerAddr:     "127.0.0.1:" + strconv.Itoa(port),
		ServerSocket:   filepath.Join(dir, "server.sock"),
		WorkloadSocket: filepath.Join(dir, "agent.sock"),
		AgentID:        spiffeid.RequireFromPath(TrustDomain, "/host/latch-test"),
		serverBin:      serverBin,
		agentBin:       agentBin,
		dir:            dir,
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := s.startServer(ctx, port); err != nil {
		return nil, err
	}
	if err := s.startAgent(ctx); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *SPIRE) startServer(ctx context.Context, port int) error {
	conf := fmt.Sprintf(`
server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
  default_jwt_svid_ttl = "5m"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = %q
    }
  }
}
`, port, s.ServerSocket, TrustDomain.Name(), filepath.Join(s.dir, "server-data"),
		filepath.Join(s.dir, "server-data", "datastore.sqlite3"),
		filepath.Join(s.dir, "server-data", "keys.json"))
	confPath := filepath.Join(s.dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("stack: spire-server config: %w", err)
	}
	var err error
	s.server, err = startProcess(s.dir, "spire-server", nil, nil, s.serverBin, "run", "-config", confPath)
	if err != nil {
		return err
	}
	return waitFor(ctx, s.server, "spire-server", func(ctx context.Context) error {
		_, err := s.serverCmd(ctx, "healthcheck", "-shallow")
		return err
	})
}

func (s *SPIRE) startAgent(ctx context.Context) error {
	bundle, err := s.serverCmd(ctx, "bundle", "show", "-format", "pem")
	if err != nil {
		return err
	}
	bundlePath := filepath.Join(s.dir, "bootstrap-bundle.pem")
	if err := os.WriteFile(bundlePath, bundle, 0o600); err != nil {
		return fmt.Errorf("stack: write bootstrap bundle: %w", err)
	}
	token, err := s.serverCmd(ctx, "token", "generate", "-spiffeID", s.AgentID.String(), "-ttl", "600")
	if err != nil {
		return err
	}
	// "Token: <value>"
	tok := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(token)), "Token:"))
	host, port, _ := strings.Cut(s.ServerAddr, ":")
	conf := fmt.Sprintf(`
agent {
  data_dir = %q
  log_level = "INFO"
  server_address = %q
  server_port = %q
  socket_path = %q
  trust_bundle_path = %q
  trust_domain = %q
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
`, filepath.Join(s.dir, "agent-data"), host, port, s.WorkloadSocket, bundlePath,
		TrustDomain.Name())
	confPath := filepath.Join(s.dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("stack: spire-agent config: %w", err)
	}
	s.agent, err = startProcess(s.dir, "spire-agent", nil, nil, s.agentBin,
		"run", "-config", confPath, "-joinToken", tok)
	if err != nil {
		return err
	}
	return waitFor(ctx, s.agent, "spire-agent", func(ctx context.Context) error {
		cmd := exec.CommandContext(ctx, s.agentBin, "healthcheck", "-socketPath", s.WorkloadSocket)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	})
}

// serverCmd runs a spire-server CLI command against the server's admin
// socket and returns its standard output.
func (s *SPIRE) serverCmd(ctx context.Context, args ...string) ([]byte, error) {
	args = append(args, "-socketPath", s.ServerSocket)
	cmd := exec.CommandContext(ctx, s.serverBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("stack: spire-server %s: %v: %s", args[0], err, bytes.TrimSpace(append(stderr.Bytes(), stdout.Bytes()...)))
	}
	return stdout.Bytes(), nil
}

// Entry is a registration entry for a workload behind the test agent.
type Entry struct {
	ID        spiffeid.ID
	Selectors []string      // e.g. "unix:uid:0", "unix:path:/usr/bin/foo"
	X509TTL   time.Duration // 0: the server's default (1h)
	JWTTTL    time.Duration // 0: the server's default (5m)
}

// Register creates a registration entry parented to the test agent and
// returns its entry ID. The agent picks new entries up within its sync
// interval (about 5 s); a Workload API client waits for them by itself.
func (s *SPIRE) Register(ctx context.Context, e Entry) (string, error) {
	args := []string{"entry", "create", "-output", "json",
		"-parentID", s.AgentID.String(), "-spiffeID", e.ID.String()}
	for _, sel := range e.Selectors {
		args = append(args, "-selector", sel)
	}
	if e.X509TTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(e.X509TTL.Seconds())))
	}
	if e.JWTTTL > 0 {
		args = append(args, "-jwtSVIDTTL", strconv.Itoa(int(e.JWTTTL.Seconds())))
	}
	out, err := s.serverCmd(ctx, args...)
	if err != nil {
		return "", err
	}
	var resp struct {
		Results []struct {
			Status struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"status"`
			Entry struct {
				ID string `json:"id"`
			} `json:"entry"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &resp); err != nil || len(resp.Results) != 1 {
		return "", fmt.Errorf("stack: entry create: unexpected output %q", out)
	}
	if r := resp.Results[0]; r.Status.Code != 0 {
		return "", fmt.Errorf("stack: entry create %s: %s", e.ID, r.Status.Message)
	}
	return resp.Results[0].Entry.ID, nil
}

// Unregister deletes a registration entry.
func (s *SPIRE) Unregister(ctx context.Context, entryID string) error {
	_, err := s.serverCmd(ctx, "entry", "delete", "-entryID", entryID)
	return err
}

// X509SVID is an X.509-SVID minted by the server, as PEM.
type X509SVID struct {
	CertPEM, KeyPEM, BundlePEM []byte
}

// MintX509SVID has the server sign an X.509-SVID for any ID, without a
// registration entry (spire-server x509 mint), with DNS names if given.
func (s *SPIRE) MintX509SVID(ctx context.Context, id spiffeid.ID, ttl time.Duration, dnsNames ...string) (*X509SVID, error) {
	out := filepath.Join(s.dir, "mint-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.Mkdir(out, 0o700); err != nil {
		return nil, fmt.Errorf("stack: x509 mint: %w", err)
	}
	defer os.RemoveAll(out)
	args := []string{"x509", "mint", "-spiffeID", id.String(), "-ttl", ttl.String(), "-write", out}
	for _, n := range dnsNames {
		args = append(args, "-dns", n)
	}
	if _, err := s.serverCmd(ctx, args...); err != nil {
		return nil, err
	}
	var svid X509SVID
	for name, dst := range map[string]*[]byte{"svid.pem": &svid.CertPEM, "key.pem": &svid.KeyPEM, "bundle.pem": &svid.BundlePEM} {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			return nil, fmt.Errorf("stack: x509 mint: %w", err)
		}
		*dst = b
	}
	return &svid, nil
}

// MintJWTSVID has the server sign a JWT-SVID for any ID and audiences
// (spire-server jwt mint).
func (s *SPIRE) MintJWTSVID(ctx context.Context, id spiffeid.ID, ttl time.Duration, audience string, extra ...string) (string, error) {
	args := []string{"jwt", "mint", "-spiffeID", id.String(), "-ttl", ttl.String(), "-audience", audience}
	for _, a := range extra {
		args = append(args, "-audience", a)
	}
	out, err := s.serverCmd(ctx, args...)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// Bundle fetches the trust domain's bundle (X.509 authorities and JWT keys).
func (s *SPIRE) Bundle(ctx context.Context) (*spiffebundle.Bundle, error) {
	out, err := s.serverCmd(ctx, "bundle", "show", "-format", "spiffe")
	if err != nil {
		return nil, err
	}
	b, err := spiffebundle.Parse(TrustDomain, out)
	if err != nil {
		return nil, fmt.Errorf("stack: parse bundle: %w", err)
	}
	return b, nil
}

// Version returns the server binary's version.
func (s *SPIRE) Version(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, s.serverBin, "--version")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("stack: spire-server --version: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func (s *SPIRE) stop() {
	s.agent.stop(5 * time.Second)
	s.server.stop(5 * time.Second)
}
