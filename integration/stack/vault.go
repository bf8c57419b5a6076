package stack

import (
	"context"
	"fmt"
	"strconv"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// Vault is a Vault server in dev mode: in memory, unsealed, with a known
// root token, listening on plain HTTP on 127.0.0.1.
type Vault struct {
	Addr      string // http://127.0.0.1:PORT
	RootToken string
	proc      *process
}

func startVault(ctx context.Context, dir string) (*Vault, error) {
	bin, err := tool("vault")
	if err != nil {
		return nil, err
	}
	port, err := freePort(true)
	if err != nil {
		return nil, err
	}
	v := &Vault{
		Addr:      "http://127.0.0.1:" + strconv.Itoa(port),
		RootToken: "latch-test-root",
	}
	v.proc, err = startProcess(dir, "vault", nil,
		[]string{"VAULT_ADDR=", "VAULT_TOKEN=", "HOME=" + dir},
		bin, "server", "-dev",
		"-dev-root-token-id="+v.RootToken,
		"-dev-listen-address=127.0.0.1:"+strconv.Itoa(port),
		"-dev-no-store-token",
		"-log-level=info",
	)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err = waitFor(ctx, v.proc, "vault", func(ctx context.Context) error {
		c, err := v.Client()
		if err != nil {
			return err
		}
		h, err := c.Sys().HealthWithContext(ctx)
		if err != nil {
			return err
		}
		if !h.Initialized || h.Sealed {
			return fmt.Errorf("initialized=%v sealed=%v", h.Initialized, h.Sealed)
		}
		return nil
	})
	if err != nil {
		v.proc.stop(5 * time.Second)
		return nil, err
	}
	return v, nil
}

// Client returns a new Vault API client authenticated with the root token.
func (v *Vault) Client() (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.Timeout = 10 * time.Second
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("stack: vault client: %w", err)
	}
	c.SetToken(v.RootToken)
	return c, nil
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

func (v *Vault) stop() { v.proc.stop(10 * time.Second) }
