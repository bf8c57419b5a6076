package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// Vault is a Vault server listening on plain HTTP on 127.0.0.1.
//
// By default it is a dev server: in memory, unsealed, with a known root
// token. With WithPersistentVault it is a regular server on file storage,
// initialised with one unseal key and unsealed by the harness, with a kv-v2
// engine at secret/ like the dev server's; Stop and Start then take it down
// and bring it back on the same address with everything it stored.
type Vault struct {
	Addr      string // http://127.0.0.1:PORT
	RootToken string

	bin, dir   string
	port       int
	persistent bool
	unsealKey  string // persistent mode: the single unseal key

	mu   sync.Mutex
	proc *process // nil while stopped
}

// Persistent reports whether the server keeps its state across Stop and
// Start (WithPersistentVault).
func (v *Vault) Persistent() bool { return v.persistent }

func startVault(ctx context.Context, dir string, persistent bool) (*Vault, error) {
	bin, err := tool("vault")
	if err != nil {
		return nil, err
	}
	port, err := FreePort(true)
	if err != nil {
		return nil, err
	}
	v := &Vault{
		Addr:       "http://127.0.0.1:" + strconv.Itoa(port),
		RootToken:  "latch-test-root",
		bin:        bin,
		dir:        dir,
		port:       port,
		persistent: persistent,
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if !persistent {
		err = v.startDev(ctx)
	} else {
		err = v.startPersistent(ctx)
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

func (v *Vault) startDev(ctx context.Context) error {
	proc, err := startProcess(v.dir, "vault", nil,
		[]string{"VAULT_ADDR=", "VAULT_TOKEN=", "HOME=" + v.dir},
		v.bin, "server", "-dev",
		"-dev-root-token-id="+v.RootToken,
		"-dev-listen-address=127.0.0.1:"+strconv.Itoa(v.port),
		"-dev-no-store-token",
		"-log-level=info",
	)
	if err != nil {
		return err
	}
	v.proc = proc
	if err := v.waitReady(ctx, proc); err != nil {
		proc.stop(5 * time.Second)
		v.proc = nil
		return err
	}
	return nil
}

// startPersistent writes the server's config, starts it, initialises it
// with a single unseal key, unseals it and mounts kv-v2 at secret/.
func (v *Vault) startPersistent(ctx context.Context) error {
	conf := fmt.Sprintf(`
storage "file" {
  path = %q
}
listener "tcp" {
  address     = "127.0.0.1:%d"
  tls_disable = true
}
api_addr      = "http://127.0.0.1:%d"
disable_mlock = true
log_level     = "info"
`, filepath.Join(v.dir, "data"), v.port, v.port)
	if err := os.WriteFile(v.confPath(), []byte(conf), 0o600); err != nil {
		return fmt.Errorf("stack: vault config: %w", err)
	}
	if err := v.launch(ctx); err != nil {
		return err
	}
	fail := func(err error) error {
		_ = v.Stop()
		return fmt.Errorf("stack: vault: %w", err)
	}
	c, err := v.apiClient("")
	if err != nil {
		return fail(err)
	}
	init, err := c.Sys().InitWithContext(ctx, &vaultapi.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		return fail(fmt.Errorf("init: %w", err))
	}
	if len(init.KeysB64) != 1 {
		return fail(fmt.Errorf("init returned %d unseal keys, want 1", len(init.KeysB64)))
	}
	v.unsealKey, v.RootToken = init.KeysB64[0], init.RootToken
	if err := v.unseal(ctx); err != nil {
		return fail(err)
	}
	c.SetToken(v.RootToken)
	if err := c.Sys().MountWithContext(ctx, "secret", &vaultapi.MountInput{
		Type: "kv", Options: map[string]string{"version": "2"},
	}); err != nil {
		return fail(fmt.Errorf("mount kv-v2 at secret/: %w", err))
	}
	// kv-v2 upgrades its storage in the background after mounting; wait
	// until it answers, as the dev server's mount does at start.
	err = waitFor(ctx, v.proc, "vault kv-v2", func(ctx context.Context) error {
		_, err := c.KVv2("secret").Put(ctx, "stack-ready", map[string]any{"ok": "1"})
		return err
	})
	if err != nil {
		return fail(err)
	}
	return c.KVv2("secret").DeleteMetadata(ctx, "stack-ready")
}

func (v *Vault) confPath() string { return filepath.Join(v.dir, "vault.hcl") }

// launch starts the non-dev server process and waits until it answers
// (sealed or not).
func (v *Vault) launch(ctx context.Context) error {
	proc, err := startProcess(v.dir, "vault", nil,
		[]string{"VAULT_ADDR=", "VAULT_TOKEN=", "HOME=" + v.dir},
		v.bin, "server", "-config="+v.confPath())
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.proc = proc
	v.mu.Unlock()
	return waitFor(ctx, proc, "vault", func(ctx context.Context) error {
		c, err := v.apiClient("")
		if err != nil {
			return err
		}
		_, err = c.Sys().SealStatusWithContext(ctx)
		return err
	})
}

// unseal unseals the server with its key and waits until it is active.
func (v *Vault) unseal(ctx context.Context) error {
	c, err := v.apiClient("")
	if err != nil {
		return err
	}
	if _, err := c.Sys().UnsealWithContext(ctx, v.unsealKey); err != nil {
		return fmt.Errorf("unseal: %w", err)
	}
	return v.waitReady(ctx, v.current())
}

// waitReady waits until the server is initialised, unsealed and active.
func (v *Vault) waitReady(ctx context.Context, proc *process) error {
	return waitFor(ctx, proc, "vault", func(ctx context.Context) error {
		c, err := v.apiClient("")
		if err != nil {
			return err
		}
		h, err := c.Sys().HealthWithContext(ctx)
		if err != nil {
			return err
		}
		if !h.Initialized || h.Sealed || h.Standby {
			return fmt.Errorf("initialized=%v sealed=%v standby=%v", h.Initialized, h.Sealed, h.Standby)
		}
		return nil
	})
}

func (v *Vault) current() *process {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.proc
}

// Stop stops the server (SIGTERM, SIGKILL after 10 s) and returns once it
// has exited; Vault's address then refuses connections. Stopping a
// stopped server does nothing.
func (v *Vault) Stop() error {
	v.mu.Lock()
	proc := v.proc
	v.proc = nil
	v.mu.Unlock()
	proc.stop(10 * time.Second)
	return nil
}

// Running reports whether the server process is up (it may be sealed or
// still starting).
func (v *Vault) Running() bool {
	p := v.current()
	if p == nil {
		return false
	}
	dead, _ := p.exited()
	return !dead
}

// ErrVaultNotPersistent is returned by Start for the dev server, whose
// state lives in memory and would be lost.
var ErrVaultNotPersistent = errors.New("stack: the Vault dev server keeps its state in memory and cannot be restarted; start the stack WithPersistentVault")

// Start brings a stopped persistent server back on the same address with
// its stored state, unseals it, and returns once it is active.
func (v *Vault) Start(ctx context.Context) error {
	if !v.persistent {
		return ErrVaultNotPersistent
	}
	if v.Running() {
		return errors.New("stack: vault is already running")
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := v.launch(ctx); err != nil {
		_ = v.Stop()
		return err
	}
	if err := v.unseal(ctx); err != nil {
		_ = v.Stop()
		return fmt.Errorf("stack: vault: %w", err)
	}
	return nil
}

// apiClient returns a Vault API client for the server with token (none
// when empty).
func (v *Vault) apiClient(token string) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.Timeout = 10 * time.Second
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("stack: vault client: %w", err)
	}
	c.ClearToken()
	if token != "" {
		c.SetToken(token)
	}
	return c, nil
}

// Client returns a new Vault API client authenticated with the root token.
func (v *Vault) Client() (*vaultapi.Client, error) { return v.apiClient(v.RootToken) }

// Pid is the running server's process ID (0 while stopped), for
// benchmarks that count the CPU time Vault spends.
func (v *Vault) Pid() int {
	if v.proc == nil {
		return 0
	}
	return v.proc.cmd.Process.Pid
}

// Version asks the running server for its version (sys/health).
func (v *Vault) Version(ctx context.Context) (string, error) {
	c, err := v.Client()
	if err != nil {
		return "", err
	}
	h, err := c.Sys().HealthWithContext(ctx)
	if err != nil {
		return "", fmt.Errorf("stack: vault health: %w", err)
	}
	return h.Version, nil
}

func (v *Vault) stop() { _ = v.Stop() }
