package attest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Defaults of the sources.
const (
	// DefaultReadyTimeout is how long OpenWorkloadAPI waits for the first
	// SVID and bundles. A SPIRE agent answers at once for a registered
	// workload; new registrations reach it within its sync interval.
	DefaultReadyTimeout = 30 * time.Second
	// DefaultPollInterval is how often OpenFiles looks for changed files.
	DefaultPollInterval = 5 * time.Second
)

// Source holds what this process needs to take part in SPIFFE
// authentication: its own X.509-SVID, the X.509 and JWT bundles of the
// trust domains it knows, and JWT-SVIDs on demand. Servers use it for
// their certificate and as the bundle sources of their Verifier; clients
// use it to dial latch. It implements x509svid.Source, x509bundle.Source,
// jwtbundle.Source and jwtsvid.Source, and keeps itself current: rotations
// and bundle updates apply without a restart.
type Source struct {
	where     string
	subject   spiffeid.ID // default JWT-SVID subject: the identity this source was opened for
	svid      x509svid.Source
	x509      x509bundle.Source
	jwtBundle jwtbundle.Source
	jwtSVID   jwtsvid.Source
	reload    func() error
	closeOnce sync.Once
	close     func() error
}

var (
	_ x509svid.Source   = (*Source)(nil)
	_ x509bundle.Source = (*Source)(nil)
	_ jwtbundle.Source  = (*Source)(nil)
	_ jwtsvid.Source    = (*Source)(nil)
)

// NewSource assembles a Source from parts that keep themselves current
// (for example attesttest's CA in tests). Any part may be nil; its methods
// then return errors.
func NewSource(svid x509svid.Source, x509Bundles x509bundle.Source, jwtBundles jwtbundle.Source, jwtSVIDs jwtsvid.Source) *Source {
	return &Source{where: "static source", svid: svid, x509: x509Bundles, jwtBundle: jwtBundles, jwtSVID: jwtSVIDs}
}

// String says where the source reads from, for logs and errors.
func (s *Source) String() string { return s.where }

// GetX509SVID returns this process's current X.509-SVID.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	if s.svid == nil {
		return nil, fmt.Errorf("attest: %s has no X.509-SVID", s.where)
	}
	return s.svid.GetX509SVID()
}

// GetX509BundleForTrustDomain returns the current X.509 bundle of td.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if s.x509 == nil {
		return nil, fmt.Errorf("attest: %s has no X.509 bundles", s.where)
	}
	return s.x509.GetX509BundleForTrustDomain(td)
}

// GetJWTBundleForTrustDomain returns the current JWT bundle of td.
func (s *Source) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	if s.jwtBundle == nil {
		return nil, fmt.Errorf("attest: %s has no JWT bundles", s.where)
	}
	return s.jwtBundle.GetJWTBundleForTrustDomain(td)
}

// FetchJWTSVID returns a JWT-SVID for params.Audience. Without a
// params.Subject, a Workload API source asks for the identity of its
// X.509-SVID, so a process registered under several IDs speaks as one. It
// returns ErrNoJWTSource when the source cannot provide JWT-SVIDs.
func (s *Source) FetchJWTSVID(ctx context.Context, params jwtsvid.Params) (*jwtsvid.SVID, error) {
	if s.jwtSVID == nil {
		return nil, fmt.Errorf("%w (%s)", ErrNoJWTSource, s.where)
	}
	if params.Subject.IsZero() {
		params.Subject = s.subject
	}
	svid, err := s.jwtSVID.FetchJWTSVID(ctx, params)
	if err != nil {
		return nil, fmt.Errorf("attest: JWT-SVID for audience %s from %s: %w", params.Audience, s.where, err)
	}
	return svid, nil
}

// Reload re-reads a file source now (for SIGHUP); it is a no-op for the
// Workload API, which pushes updates by itself.
func (s *Source) Reload() error {
	if s.reload == nil {
		return nil
	}
	return s.reload()
}

// Close stops watching and releases the connection or poller.
func (s *Source) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.close != nil {
			err = s.close()
		}
	})
	return err
}

// WorkloadAPIConfig configures OpenWorkloadAPI.
type WorkloadAPIConfig struct {
	// Addr is the Workload API address ("unix:///run/spire/agent.sock");
	// empty means $SPIFFE_ENDPOINT_SOCKET.
	Addr string
	// ID picks this X.509-SVID when the Workload API gives the process
	// several; zero takes the first. Servers set it to their server ID.
	ID spiffeid.ID
	// ReadyTimeout bounds the wait for the first SVID and bundles
	// (0: DefaultReadyTimeout).
	ReadyTimeout time.Duration
	// Logger receives the Workload API client's errors (nil: discarded).
	Logger *slog.Logger
}

// OpenWorkloadAPI connects to the SPIFFE Workload API and waits until it has
// delivered this process's X.509-SVID and the X.509 and JWT bundles. It
// fails with an error wrapping ErrNotReady and naming the socket when that
// takes longer than the ready timeout. The Source follows SVID rotations
// and bundle updates until it is closed.
func OpenWorkloadAPI(ctx context.Context, cfg WorkloadAPIConfig) (*Source, error) {
	addr := cfg.Addr
	if addr == "" {
		addr, _ = workloadapi.GetDefaultAddress()
	}
	if addr == "" {
		return nil, fmt.Errorf("attest: no Workload API address: configure one or set %s", workloadapi.SocketEnv)
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return nil, fmt.Errorf("attest: Workload API address %q: %w", addr, err)
	}
	timeout := cfg.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	log := &wlLogger{log: cfg.Logger}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr), workloadapi.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("attest: Workload API at %s: %w", addr, err)
	}
	readyCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var (
		offeredMu sync.Mutex
		offered   []spiffeid.ID
	)
	opts := []workloadapi.X509SourceOption{workloadapi.WithClient(client)}
	if !cfg.ID.IsZero() {
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			offeredMu.Lock()
			defer offeredMu.Unlock()
			offered = offered[:0]
			for _, s := range svids {
				offered = append(offered, s.ID)
				if s.ID == cfg.ID {
					return s
				}
			}
			return nil
		}))
	}
	x509Src, err := workloadapi.NewX509Source(readyCtx, opts...)
	if err != nil {
		return nil, errors.Join(notReady(addr, timeout, "X.509-SVID", log.lastError(), err), client.Close())
	}
	jwtSrc, err := workloadapi.NewJWTSource(readyCtx, workloadapi.WithClient(client))
	if err != nil {
		return nil, errors.Join(notReady(addr, timeout, "JWT bundles", log.lastError(), err), x509Src.Close(), client.Close())
	}
	closeAll := func() error { return errors.Join(jwtSrc.Close(), x509Src.Close(), client.Close()) }
	// The first update may predate the registration of cfg.ID (an agent
	// syncs new entries every few seconds): wait for it within the timeout.
	svid, err := x509Src.GetX509SVID()
	for err != nil {
		select {
		case <-x509Src.Updated():
			svid, err = x509Src.GetX509SVID()
		case <-readyCtx.Done():
			offeredMu.Lock()
			ids := fmt.Sprint(offered)
			offeredMu.Unlock()
			return nil, errors.Join(fmt.Errorf("attest: Workload API at %s offers this process %s but not %s within %s: register it under that ID: %w", addr, ids, cfg.ID, timeout, ErrNotReady), closeAll())
		}
	}
	return &Source{
		where:     "Workload API at " + addr,
		subject:   svid.ID,
		svid:      x509Src,
		x509:      x509Src,
		jwtBundle: jwtSrc,
		jwtSVID:   jwtSrc,
		close:     closeAll,
	}, nil
}

func notReady(addr string, timeout time.Duration, what, last string, err error) error {
	hint := "is the SPIFFE agent running, and is this process registered with it?"
	if last != "" {
		hint = "last error: " + last
	}
	return fmt.Errorf("attest: Workload API at %s gave no %s within %s (%s): %w: %w", addr, what, timeout, hint, ErrNotReady, err)
}

// wlLogger keeps the Workload API client's last error, which is what tells
// an operator why the source never became ready ("no identity issued",
// "connection refused"), and passes messages on to a slog.Logger.
type wlLogger struct {
	log  *slog.Logger
	mu   sync.Mutex
	last string
}

func (l *wlLogger) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

func (l *wlLogger) Debugf(format string, args ...any) { l.emit(slog.LevelDebug, format, args) }
func (l *wlLogger) Infof(format string, args ...any)  { l.emit(slog.LevelInfo, format, args) }
func (l *wlLogger) Warnf(format string, args ...any)  { l.emit(slog.LevelWarn, format, args) }
func (l *wlLogger) Errorf(format string, args ...any) {
	l.mu.Lock()
	l.last = fmt.Sprintf(format, args...)
	l.mu.Unlock()
	l.emit(slog.LevelError, format, args)
}

func (l *wlLogger) emit(level slog.Level, format string, args []any) {
	if l.log != nil {
		l.log.Log(context.Background(), level, "workload api: "+fmt.Sprintf(format, args...))
	}
}

// FilesConfig configures OpenFiles: SVIDs and bundles kept on disk by
// something else (spiffe-helper, a deployment tool) on hosts without a
// Workload API.
type FilesConfig struct {
	// CertFile (PEM chain, leaf first) and KeyFile (PEM, PKCS#8 or SEC 1)
	// are this process's X.509-SVID. Optional for a bearer-token client.
	CertFile, KeyFile string
	// BundleFile holds the X.509 authorities of TrustDomain: PEM, or a SPIFFE
	// bundle (JSON). Required.
	BundleFile string
	// JWTBundleFile holds the JWT authorities of TrustDomain: a SPIFFE
	// bundle (JSON) or a plain JWKS. It may name the same SPIFFE bundle as
	// BundleFile. Optional; without it bearer tokens cannot be verified.
	JWTBundleFile string
	// JWTSVIDFile holds a JWT-SVID that something else keeps fresh; a
	// bearer client sends it. Optional.
	JWTSVIDFile string
	// TrustDomain owns BundleFile and JWTBundleFile; zero means the trust
	// domain of the X.509-SVID.
	TrustDomain spiffeid.TrustDomain
	// FederatedBundleFiles are SPIFFE bundles (JSON) of other trust domains.
	// They only matter for trust domains the Verifier accepts.
	FederatedBundleFiles map[spiffeid.TrustDomain]string
	// PollInterval is how often the files are checked for changes
	// (0: DefaultPollInterval; negative: never, only on Reload).
	PollInterval time.Duration
	// Logger receives reload failures (nil: discarded). The source keeps
	// serving the last good files meanwhile.
	Logger *slog.Logger
}

// OpenFiles loads SVIDs and bundles from files and re-reads them when
// their content changes. A change that does not load (a certificate
// written before its key, say) is logged and the last good set is kept
// until the files are consistent again.
func OpenFiles(cfg FilesConfig) (*Source, error) {
	if cfg.BundleFile == "" {
		return nil, errors.New("attest: files: a bundle file is required")
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("attest: files: an X.509-SVID needs both a certificate and a key file")
	}
	fs := &fileSource{cfg: cfg}
	if err := fs.load(); err != nil {
		return nil, err
	}
	src := &Source{
		where:  "files " + strings.Join(fs.paths(), ", "),
		x509:   fs,
		reload: fs.load,
	}
	if cfg.CertFile != "" {
		src.svid = fs
	}
	if cfg.JWTBundleFile != "" {
		src.jwtBundle = fs
	}
	if cfg.JWTSVIDFile != "" {
		src.jwtSVID = fs
	}
	interval := cfg.PollInterval
	if interval == 0 {
		interval = DefaultPollInterval
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	if interval > 0 {
		go fs.poll(interval, stop, done)
	} else {
		close(done)
	}
	src.close = func() error {
		close(stop)
		<-done
		return nil
	}
	return src, nil
}

type fileSource struct {
	cfg FilesConfig

	loadMu  sync.Mutex        // serializes load
	content map[string][]byte // what the last successful load read
	lastErr string

	mu   sync.RWMutex
	svid *x509svid.SVID
	x509 *x509bundle.Set
	jwt  *jwtbundle.Set
}

func (f *fileSource) paths() []string {
	p := []string{f.cfg.CertFile, f.cfg.KeyFile, f.cfg.BundleFile, f.cfg.JWTBundleFile}
	for _, td := range sortedDomains(f.cfg.FederatedBundleFiles) {
		p = append(p, f.cfg.FederatedBundleFiles[td])
	}
	return slices.DeleteFunc(p, func(s string) bool { return s == "" })
}

func sortedDomains(m map[spiffeid.TrustDomain]string) []spiffeid.TrustDomain {
	tds := make([]spiffeid.TrustDomain, 0, len(m))
	for td := range m {
		tds = append(tds, td)
	}
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	return tds
}

func (f *fileSource) poll(interval time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			err := f.load()
			f.loadMu.Lock()
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			changed := msg != f.lastErr
			f.lastErr = msg
			f.loadMu.Unlock()
			if changed && f.cfg.Logger != nil {
				if err != nil {
					f.cfg.Logger.Warn("attest: reload failed, keeping the last good SVID and bundles", "err", err)
				} else {
					f.cfg.Logger.Info("attest: files reloaded")
				}
			}
		}
	}
}

// load reads every file and, if any changed, parses them all and swaps
// them in together. Comparing contents rather than modification times
// catches edits within one timestamp tick and ignores touches.
func (f *fileSource) load() error {
	f.loadMu.Lock()
	defer f.loadMu.Unlock()
	content := make(map[string][]byte)
	for _, p := range f.paths() { // not the JWT-SVID file: it is read on every fetch
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("attest: files: %w", err)
		}
		content[p] = b
	}
	if f.content != nil && sameContent(f.content, content) {
		return nil
	}

	var svid *x509svid.SVID
	if f.cfg.CertFile != "" {
		var err error
		svid, err = x509svid.Parse(content[f.cfg.CertFile], content[f.cfg.KeyFile])
		if err != nil {
			return fmt.Errorf("attest: files: X.509-SVID %s, %s: %w", f.cfg.CertFile, f.cfg.KeyFile, err)
		}
	}
	td := f.cfg.TrustDomain
	if td.IsZero() {
		if svid == nil {
			return errors.New("attest: files: without an X.509-SVID the bundles' trust domain must be configured")
		}
		td = svid.ID.TrustDomain()
	}
	x509b, err := parseX509Bundle(td, content[f.cfg.BundleFile])
	if err != nil {
		return fmt.Errorf("attest: files: bundle %s: %w", f.cfg.BundleFile, err)
	}
	x509Set, jwtSet := x509bundle.NewSet(x509b), jwtbundle.NewSet()
	if f.cfg.JWTBundleFile != "" {
		jb, err := parseJWTBundle(td, content[f.cfg.JWTBundleFile])
		if err != nil {
			return fmt.Errorf("attest: files: JWT bundle %s: %w", f.cfg.JWTBundleFile, err)
		}
		jwtSet.Add(jb)
	}
	for fedTD, p := range f.cfg.FederatedBundleFiles {
		b, err := spiffebundle.Parse(fedTD, content[p])
		if err != nil {
			return fmt.Errorf("attest: files: federated bundle %s: %w", p, err)
		}
		x509Set.Add(b.X509Bundle())
		jwtSet.Add(b.JWTBundle())
	}

	f.mu.Lock()
	f.svid, f.x509, f.jwt = svid, x509Set, jwtSet
	f.mu.Unlock()
	f.content = content
	return nil
}

func sameContent(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

func isJSON(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) > 0 && b[0] == '{'
}

// parseX509Bundle takes PEM or a SPIFFE bundle. A bundle without
// authorities is an error, not an empty trust store: it is always a wrong
// file (a key, a JWKS) that would otherwise refuse every caller silently.
func parseX509Bundle(td spiffeid.TrustDomain, b []byte) (*x509bundle.Bundle, error) {
	var xb *x509bundle.Bundle
	if isJSON(b) {
		sb, err := spiffebundle.Parse(td, b)
		if err != nil {
			return nil, err
		}
		xb = sb.X509Bundle()
	} else {
		var err error
		if xb, err = x509bundle.Parse(td, b); err != nil {
			return nil, err
		}
	}
	if xb.Empty() {
		return nil, errors.New("no X.509 authorities (CERTIFICATE blocks or x509-svid keys) in it")
	}
	return xb, nil
}

// parseJWTBundle takes a SPIFFE bundle (keys marked "use": "jwt-svid") or,
// failing that, a plain JWKS whose keys are all JWT authorities.
func parseJWTBundle(td spiffeid.TrustDomain, b []byte) (*jwtbundle.Bundle, error) {
	if sb, err := spiffebundle.Parse(td, b); err == nil && len(sb.JWTAuthorities()) > 0 {
		return sb.JWTBundle(), nil
	}
	jb, err := jwtbundle.Parse(td, b)
	if err != nil {
		return nil, err
	}
	if jb.Empty() {
		return nil, errors.New("no JWT authorities in it")
	}
	return jb, nil
}

func (f *fileSource) GetX509SVID() (*x509svid.SVID, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.svid, nil
}

func (f *fileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.x509.GetX509BundleForTrustDomain(td)
}

func (f *fileSource) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.jwt.GetJWTBundleForTrustDomain(td)
}

// FetchJWTSVID reads the JWT-SVID file on every call, so the latest token
// written there is sent, and checks it is for the requested audience and
// still valid before sending it anywhere.
func (f *fileSource) FetchJWTSVID(_ context.Context, params jwtsvid.Params) (*jwtsvid.SVID, error) {
	file, err := os.Open(f.cfg.JWTSVIDFile)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	b, err := io.ReadAll(io.LimitReader(file, MaxTokenSize+1))
	if err != nil {
		return nil, err
	}
	svid, err := jwtsvid.ParseInsecure(strings.TrimSpace(string(b)), []string{params.Audience})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.cfg.JWTSVIDFile, err)
	}
	if !params.Subject.IsZero() && svid.ID != params.Subject {
		return nil, fmt.Errorf("%s: JWT-SVID is for %s, not %s", f.cfg.JWTSVIDFile, svid.ID, params.Subject)
	}
	return svid, nil
}
