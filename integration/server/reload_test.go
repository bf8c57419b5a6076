package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// configLoads returns the config_load audit events, oldest first.
func configLoads(ctx context.Context, l *latch) ([]api.Event, error) {
	res, err := l.admin().Audit(ctx, api.AuditQuery{Types: []string{"config_load"}, Limit: 100})
	if err != nil {
		return nil, err
	}
	return res.Events, nil
}

func TestServer_Reload(t *testing.T) {
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := l.client(agentPrefix + "reload-bot")
	first := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"})
	loads, err := configLoads(ctx, l)
	if err != nil || len(loads) != 1 {
		t.Fatalf("config_load events at start = %+v, %v", loads, err)
	}
	oldVersion := loads[0].Details["template.close-ticket"]
	if oldVersion == "" || oldVersion != first.Lease.TemplateVersion {
		t.Fatalf("config_load names close-ticket %q; the lease has %q", oldVersion, first.Lease.TemplateVersion)
	}

	// A broken template: the reload fails, latch keeps serving the old
	// config and says why.
	good := templateFiles["close-ticket.yaml"]
	l.writeTemplate("close-ticket.yaml", strings.Replace(good, "backend: tokens", "backend: no-such-backend", 1))
	l.signal(syscall.SIGHUP)
	vaultenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(l.log(), "config reload failed") {
			return errors.New("no reload failure in the log")
		}
		return nil
	})
	if log := l.log(); !strings.Contains(log, "no-such-backend") {
		t.Fatalf("the reload failure does not name the bad backend:\n%s", log)
	}
	if res := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"}); res.Lease.TemplateVersion != oldVersion {
		t.Fatalf("after a bad reload the lease has version %s, want the running %s", res.Lease.TemplateVersion, oldVersion)
	}
	if loads, err := configLoads(ctx, l); err != nil || len(loads) != 1 {
		t.Fatalf("config_load events after a bad reload = %+v, %v", loads, err)
	}

	// Fixed, and changed: the new version is audited and used.
	l.writeTemplate("close-ticket.yaml", strings.Replace(good, "ttl: 5m", "ttl: 4m", 1))
	l.signal(syscall.SIGHUP)
	var newVersion string
	vaultenv.Eventually(t, 10*time.Second, func() error {
		loads, err := configLoads(ctx, l)
		if err != nil {
			return err
		}
		if len(loads) != 2 {
			return fmt.Errorf("%d config_load events, want 2", len(loads))
		}
		newVersion = loads[1].Details["template.close-ticket"]
		return nil
	})
	if !strings.HasPrefix(newVersion, "sha256:") || newVersion == oldVersion {
		t.Fatalf("config_load after the fix names close-ticket %q (before: %q)", newVersion, oldVersion)
	}
	if res := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"}); res.Lease.TemplateVersion != newVersion {
		t.Fatalf("after the reload the lease has version %s, want %s", res.Lease.TemplateVersion, newVersion)
	}

	// Backends are built at start: a reload that adds one, with a template
	// using it, is refused; one that changes a backend's type fails to
	// load (its templates no longer fit it). The running config is kept.
	cfg, err := os.ReadFile(l.config)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, config, want string }{
		{"AddedBackend", strings.Replace(string(cfg), "backends:\n", "backends:\n  more-tokens: { type: vault-token }\n", 1),
			`names backend \"more-tokens\", which latch was not started with`},
		{"ChangedType", strings.Replace(string(cfg), "tokens: { type: vault-token }", "tokens: { type: vault-pki, mount: pki, role: agents }", 1),
			`backend: \"tokens\" is a vault-pki backend`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeFile(t, l.config, []byte(tc.config))
			if tc.name == "AddedBackend" {
				l.writeTemplate("more.yaml", strings.Replace(strings.Replace(good, "name: close-ticket", "name: more", 1), "backend: tokens", "backend: more-tokens", 1))
				defer os.Remove(filepath.Join(l.dir, "templates", "more.yaml"))
			}
			before := strings.Count(l.log(), "keeping the running config")
			l.signal(syscall.SIGHUP)
			vaultenv.Eventually(t, 10*time.Second, func() error {
				if strings.Count(l.log(), "keeping the running config") == before {
					return errors.New("no refused reload in the log")
				}
				return nil
			})
			if log := l.log(); !strings.Contains(log, tc.want) {
				t.Fatalf("the refusal does not say %q:\n%s", tc.want, log)
			}
			if res := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"}); res.Lease.TemplateVersion != newVersion {
				t.Fatalf("after a refused reload the lease has version %s, want the running %s", res.Lease.TemplateVersion, newVersion)
			}
		})
	}
	writeFile(t, l.config, cfg)
}
