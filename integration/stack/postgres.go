package stack

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a PostgreSQL server initialised in a temporary directory and
// listening on 127.0.0.1 only, with a password superuser for Vault's
// database secrets engine.
type Postgres struct {
	Host     string // 127.0.0.1
	Port     int
	User     string // superuser
	Password string
	binDir   string
	proc     *process
}

// PostgreSQL refuses to run as root; as root the harness runs it as this
// unprivileged user (Debian's postgresql package creates it).
const postgresOSUser = "postgres"

func startPostgres(ctx context.Context, dir string) (*Postgres, error) {
	binDir, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	port, err := FreePort(false)
	if err != nil {
		return nil, err
	}
	pg := &Postgres{Host: "127.0.0.1", Port: port, User: "latch_admin", Password: "latch-admin-pw", binDir: binDir}

	dataDir := filepath.Join(dir, "pgdata")
	sockDir := filepath.Join(dir, "pgsock")
	pwFile := filepath.Join(dir, "pgpass")
	for _, d := range []string{dataDir, sockDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("stack: postgres: %w", err)
		}
	}
	if err := os.WriteFile(pwFile, []byte(pg.Password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("stack: postgres: %w", err)
	}
	cred, err := pg.runAs(dir, dataDir, sockDir, pwFile)
	if err != nil {
		return nil, err
	}

	initdb := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"-D", dataDir, "-U", pg.User, "--pwfile", pwFile,
		"--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("stack: initdb: %v: %s", err, out)
	}

	pg.proc, err = startProcess(dir, "postgres", cred, []string{"LC_ALL=C"},
		filepath.Join(binDir, "postgres"),
		"-D", dataDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(port),
		"-c", "unix_socket_directories="+sockDir,
		"-c", "fsync=off",
		"-c", "max_connections=200",
	)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err = waitFor(ctx, pg.proc, "postgres", func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, pg.URL(pg.User, pg.Password))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err != nil {
		pg.stop()
		return nil, err
	}
	return pg, nil
}

// runAs returns the credential to run PostgreSQL with — the postgres user
// when we are root, none (ourselves) otherwise — and hands it the paths it
// needs.
func (pg *Postgres) runAs(stackDir string, paths ...string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(postgresOSUser)
	if err != nil {
		return nil, fmt.Errorf("stack: PostgreSQL cannot run as root and user %q is missing: %w", postgresOSUser, ErrToolMissing)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// The stack's directories are 0700 root: let postgres traverse them.
	for _, d := range []string{filepath.Dir(stackDir), stackDir} {
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, fmt.Errorf("stack: postgres: %w", err)
		}
	}
	for _, p := range paths {
		if err := os.Chown(p, uid, gid); err != nil {
			return nil, fmt.Errorf("stack: postgres: %w", err)
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// URL is a connection URL for user on the server's TCP address.
func (pg *Postgres) URL(user, password string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     pg.Host + ":" + strconv.Itoa(pg.Port),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// VaultConnectionURL is the templated URL Vault's database secrets engine
// takes; Vault fills in the username and password itself.
func (pg *Postgres) VaultConnectionURL() string {
	return fmt.Sprintf("postgresql://{{username}}:{{password}}@%s:%d/postgres?sslmode=disable", pg.Host, pg.Port)
}

// Version returns the server's version string (SHOW server_version).
func (pg *Postgres) Version(ctx context.Context) (string, error) {
	conn, err := pgx.Connect(ctx, pg.URL(pg.User, pg.Password))
	if err != nil {
		return "", fmt.Errorf("stack: postgres: %w", err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return "", fmt.Errorf("stack: postgres version: %w", err)
	}
	return strings.Fields(v)[0], nil
}

// Addr is host:port.
func (pg *Postgres) Addr() string { return pg.Host + ":" + strconv.Itoa(pg.Port) }

func (pg *Postgres) stop() {
	// SIGTERM is PostgreSQL's "smart" shutdown, which waits for clients;
	// SIGINT ("fast") disconnects them, which is what teardown wants.
	if pg.proc != nil {
		_ = syscall.Kill(pg.proc.cmd.Process.Pid, syscall.SIGINT)
	}
	pg.proc.stop(10 * time.Second)
}
