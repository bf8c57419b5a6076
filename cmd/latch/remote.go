package main

// The networked commands' shared parts: connection flags and the client
// they build, exit codes, output formats, and flags typed after arguments.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

// Exit statuses of the networked commands.
const (
	exitOK      = 0
	exitError   = 1
	exitUsage   = 2
	exitDenied  = 3 // 401 or 403: the server refused the caller or the request
	exitPending = 4 // fetch: the request still waits for approval
)

// Defaults of the connection flags.
const (
	defaultAddr     = "https://127.0.0.1:8443"
	defaultServerID = "spiffe://example.org/latch"
	// remoteCallTimeout bounds one request (streams and waits excepted).
	remoteCallTimeout = 30 * time.Second
	// workloadAPITimeout bounds the wait for an SVID from the Workload API.
	workloadAPITimeout = 15 * time.Second
)

const connCategory = "Connection"

// connFlags are the flags of every networked command. Operator commands
// also take --admin-socket.
func connFlags(operator bool) []cli.Flag {
	fs := []cli.Flag{
		&cli.StringFlag{Name: "addr", Category: connCategory, EnvVars: []string{"LATCH_ADDR"}, Value: defaultAddr,
			Usage: "latch server `URL`, or host:port as in server.listen (https implied)"},
		&cli.StringFlag{Name: "server-id", Category: connCategory, EnvVars: []string{"LATCH_SERVER_ID"}, Value: defaultServerID,
			Usage: "the latch server's SPIFFE `ID`: the server must prove it with its X.509-SVID"},
		&cli.BoolFlag{Name: "jwt", Category: connCategory, EnvVars: []string{"LATCH_JWT"},
			Usage: "authenticate with a JWT-SVID bearer token instead of mutual TLS"},
		&cli.StringFlag{Name: "cert", Category: connCategory, EnvVars: []string{"LATCH_CERT"},
			Usage: "X.509-SVID certificate `FILE` (PEM, leaf first), instead of the Workload API"},
		&cli.StringFlag{Name: "key", Category: connCategory, EnvVars: []string{"LATCH_KEY"},
			Usage: "private key `FILE` of --cert (PEM)"},
		&cli.StringFlag{Name: "bundle", Category: connCategory, EnvVars: []string{"LATCH_BUNDLE"},
			Usage: "trust bundle `FILE` (PEM or SPIFFE JSON) to verify the server with"},
		&cli.StringFlag{Name: "jwt-svid", Category: connCategory, EnvVars: []string{"LATCH_JWT_SVID"},
			Usage: "JWT-SVID `FILE` kept fresh by another process, sent with --jwt when not using the Workload API"},
	}
	if operator {
		fs = append(fs, &cli.StringFlag{Name: "admin-socket", Category: connCategory, EnvVars: []string{"LATCH_ADMIN_SOCKET"},
			Usage: "talk to latch's local admin socket at `PATH` (break-glass operator; no SVID needed)"})
	}
	return fs
}

// connHelp ends the description of every networked command.
const connHelp = "\n\nIdentity: the SPIFFE Workload API at $SPIFFE_ENDPOINT_SOCKET (X.509-SVID over\n" +
	"mutual TLS, or a JWT-SVID bearer with --jwt); or --cert/--key/--bundle files;\n" +
	"operator commands may use --admin-socket instead. The server is --addr\n" +
	"($LATCH_ADDR) and must prove it is --server-id ($LATCH_SERVER_ID).\n\n" +
	"Exit status: 0 ok, 1 error, 2 usage, 3 denied (401/403)."

// dial builds the client of the command's connection flags. close
// releases the identity source.
func dial(c *cli.Context) (cl *client.Client, closeFn func(), err error) {
	if p := c.String("admin-socket"); p != "" {
		for _, f := range []string{"cert", "key", "bundle", "jwt-svid"} {
			if c.String(f) != "" {
				return nil, nil, usageErrorf("--admin-socket and --%s exclude each other", f)
			}
		}
		if c.Bool("jwt") {
			return nil, nil, usageErrorf("--admin-socket and --jwt exclude each other")
		}
		return client.NewUnix(p), func() {}, nil
	}
	if s, err := sessionFor(c); s != nil || err != nil {
		if err != nil {
			return nil, nil, err
		}
		cl, err := s.client()
		return cl, func() {}, err
	}
	sid, err := spiffeid.FromString(c.String("server-id"))
	if err != nil {
		return nil, nil, usageErrorf("--server-id %q: %v", c.String("server-id"), err)
	}
	method := attest.MethodX509
	if c.Bool("jwt") {
		method = attest.MethodJWT
	}
	var src *attest.Source
	if c.String("cert") != "" || c.String("key") != "" || c.String("bundle") != "" || c.String("jwt-svid") != "" {
		if c.String("bundle") == "" {
			return nil, nil, usageErrorf("--bundle is required with --cert/--key (the server is verified against it)")
		}
		fc := attest.FilesConfig{
			CertFile:     c.String("cert"),
			KeyFile:      c.String("key"),
			BundleFile:   c.String("bundle"),
			JWTSVIDFile:  c.String("jwt-svid"),
			PollInterval: -1, // a CLI call is short
		}
		if fc.CertFile == "" {
			// No SVID to take it from: the bundle is the server's.
			fc.TrustDomain = sid.TrustDomain()
		}
		src, err = attest.OpenFiles(fc)
	} else {
		if os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" {
			hint := ""
			if hasFlag(c.Command, "admin-socket") {
				hint = ", or --admin-socket"
			}
			return nil, nil, usageErrorf("no identity: set SPIFFE_ENDPOINT_SOCKET to the Workload API socket, or give --cert, --key and --bundle%s", hint)
		}
		// ReadyTimeout bounds the wait; the context lives as long as the
		// source, which keeps streaming from it.
		src, err = attest.OpenWorkloadAPI(c.Context, attest.WorkloadAPIConfig{ReadyTimeout: workloadAPITimeout})
	}
	if err != nil {
		return nil, nil, err
	}
	hc, err := attest.NewHTTPClient(src, sid, method)
	if err == nil {
		cl, err = client.New(hc, serverURL(c.String("addr")))
	}
	if err != nil {
		src.Close()
		return nil, nil, err
	}
	return cl, func() { src.Close() }, nil
}

// serverURL takes --addr as a URL, or as host:port as server.listen
// writes it (https implied).
func serverURL(addr string) string {
	if strings.Contains(addr, "://") {
		return addr
	}
	return "https://" + addr
}

// sessionFor returns the session latch login kept, for an operator
// command that names no other identity (SVID files, or the Workload API
// when no session is kept); nil when there is none to use.
func sessionFor(c *cli.Context) (*savedSession, error) {
	if !hasFlag(c.Command, "admin-socket") {
		return nil, nil // agents' commands: agents have SVIDs
	}
	for _, f := range []string{"cert", "key", "bundle", "jwt-svid"} {
		if c.String(f) != "" {
			return nil, nil
		}
	}
	return loadSession()
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// fail prints err on stderr and returns the error that ends latch with
// its exit status: 3 for 401 and 403, 2 for usage errors, 1 otherwise.
func fail(c *cli.Context, err error) error {
	if err == nil {
		return nil
	}
	if ec, ok := errors.AsType[cli.ExitCoder](err); ok {
		return ec
	}
	code := exitError
	msg := "latch: " + err.Error()
	if e, ok := errors.AsType[*client.Error](err); ok {
		msg = e.Error() // "latch: 403 forbidden: ..."
		if e.Status == 401 || e.Status == 403 {
			code = exitDenied
		}
		if e.RequestID != "" && e.Status >= 500 {
			msg += " (request " + e.RequestID + ")"
		}
	} else if _, ok := errors.AsType[*url.Error](err); ok && c.String("admin-socket") == "" {
		// Did not reach it, or it is not who it should be.
		msg += fmt.Sprintf(" (--addr %s, --server-id %s)", c.String("addr"), c.String("server-id"))
	} else if _, ok := errors.AsType[*usageError](err); ok {
		code = exitUsage
		if c.Command != nil && c.Command.UsageText != "" {
			msg += "\nusage: " + c.Command.UsageText
		}
	}
	fmt.Fprintln(c.App.ErrWriter, msg)
	return cli.Exit("", code)
}

// onUsageError turns urfave's flag parsing errors into exit status 2.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return fail(c, usageErrorf("%v", err))
}

// connector dials the server of the connection flags, once the command
// checked its arguments.
type connector func() (*client.Client, error)

// remoteAction is the action of a networked command.
type remoteAction func(c *cli.Context, args []string, connect connector) error

// remote wraps the action of a networked command: it takes flags typed
// after arguments, dials on demand, and maps errors to exit statuses.
func remote(action remoteAction) cli.ActionFunc {
	return func(c *cli.Context) error {
		args, err := interspersedFlags(c)
		if errors.Is(err, errHelpAsked) {
			if p := c.Lineage(); len(p) > 1 {
				return cli.ShowCommandHelp(p[1], c.Command.Name)
			}
			return nil
		}
		if err != nil {
			return fail(c, err)
		}
		if err := checkOutput(c); err != nil {
			return fail(c, err)
		}
		var closeFn func()
		defer func() {
			if closeFn != nil {
				closeFn()
			}
		}()
		connect := func() (*client.Client, error) {
			cl, cf, err := dial(c)
			closeFn = cf
			return cl, err
		}
		return fail(c, action(c, args, connect))
	}
}

// errHelpAsked is --help typed after an argument.
var errHelpAsked = errors.New("help asked")

// interspersedFlags parses the flags among c's arguments, which urfave/cli
// leaves alone once it met the first argument (latch revoke ID --reason
// x), and returns the arguments that are not flags. "--" ends the flags.
func interspersedFlags(c *cli.Context) ([]string, error) {
	args := c.Args().Slice()
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(pos, args[i+1:]...), nil
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "help" || name == "h" {
			return nil, errHelpAsked
		}
		f := lookupFlag(c.Command, name)
		if f == nil {
			return nil, usageErrorf("flag provided but not defined: %s", a)
		}
		if tv, ok := f.(interface{ TakesValue() bool }); ok && !tv.TakesValue() {
			if !hasVal {
				val = "true"
			}
		} else if !hasVal {
			if i+1 == len(args) {
				return nil, usageErrorf("flag needs an argument: %s", a)
			}
			i++
			val = args[i]
		}
		// urfave/cli gives each name of a scalar flag its own storage and
		// syncs them only while parsing; repeatable flags share one value.
		names := f.Names()
		switch f.(type) {
		case *cli.GenericFlag, *cli.StringSliceFlag:
			names = []string{name}
		}
		for _, n := range names {
			if err := c.Set(n, val); err != nil {
				return nil, usageErrorf("invalid value %q for flag %s: %v", val, a, err)
			}
		}
	}
	return pos, nil
}

func lookupFlag(cmd *cli.Command, name string) cli.Flag {
	if cmd == nil {
		return nil
	}
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func hasFlag(cmd *cli.Command, name string) bool { return lookupFlag(cmd, name) != nil }

// outputFlag is -o of a command; the first format is the default.
func outputFlag(formats ...string) *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: formats[0],
		Usage: "output format: " + strings.Join(formats, " or ")}
}

// checkOutput validates -o against the formats its flag names.
func checkOutput(c *cli.Context) error {
	f, ok := lookupFlag(c.Command, "output").(*cli.StringFlag)
	if !ok {
		return nil
	}
	formats := strings.Split(strings.TrimPrefix(f.Usage, "output format: "), " or ")
	for _, v := range formats {
		if c.String("output") == v {
			return nil
		}
	}
	return usageErrorf("-o: expected %s, got %q", strings.Join(formats, " or "), c.String("output"))
}

// callCtx bounds one request.
func callCtx(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, remoteCallTimeout)
}

// requireReason returns --reason, or a usage error.
func requireReason(c *cli.Context) (string, error) {
	r := strings.TrimSpace(c.String("reason"))
	if r == "" {
		return "", usageErrorf("--reason is required: say why, it goes to the audit log")
	}
	return r, nil
}

// reasonFlag is --reason.
func reasonFlag(usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: "reason", Aliases: []string{"r"}, Usage: usage}
}

// oneArg returns the single argument of a command, or a usage error.
func oneArg(args []string, what string) (string, error) {
	switch len(args) {
	case 1:
		return args[0], nil
	case 0:
		return "", usageErrorf("missing %s", what)
	}
	return "", usageErrorf("expected one %s, got %d arguments: %q", what, len(args), args)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// fmtTime prints a time for tables: RFC 3339 in UTC, "-" when zero.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// dash prints "-" for an empty table cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// isTerminal reports whether r is a terminal (a character device).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// leaseStates is the --state help.
var leaseStates = strings.Join(api.LeaseStates, ", ")
