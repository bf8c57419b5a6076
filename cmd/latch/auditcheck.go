package main

import (
	"bufio"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/checkpoint"
)

// expectations reads --checkpoint (signatures checked against --bundle)
// and --expect into what the chain must agree with.
func expectations(c *cli.Context) ([]boltstore.Expectation, error) {
	var out []boltstore.Expectation
	for _, s := range c.StringSlice("expect") {
		seqText, hash, ok := strings.Cut(s, ":")
		seq, err := strconv.ParseUint(seqText, 10, 64)
		if !ok || err != nil || seq == 0 || len(hash) != 64 {
			return nil, fmt.Errorf("--expect %q: want SEQ:HASH, a record number and its 64-digit hash", s)
		}
		out = append(out, boltstore.Expectation{Seq: seq, Hash: hash, Source: "--expect " + seqText})
	}
	f := c.String("checkpoint")
	if f == "" {
		return out, nil
	}
	bundle, err := checkpointBundle(c)
	if err != nil {
		return nil, err
	}
	cps, err := readCheckpoints(f, bundle)
	if err != nil {
		return nil, err
	}
	return append(out, cps...), nil
}

// checkpointBundle is --bundle, or spiffe.bundle of the config.
func checkpointBundle(c *cli.Context) (pemBundle, error) {
	path := c.String("bundle")
	if path == "" {
		cfg, err := LoadConfig(c.String("config"))
		if err != nil || cfg.SPIFFE.Bundle == "" {
			return nil, errors.New("--checkpoint needs --bundle, the SPIFFE trust bundle (PEM) the checkpoints are signed under, or a config with spiffe.bundle")
		}
		path = cfg.SPIFFE.Bundle
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--bundle: %w", err)
	}
	// The trust domain is a placeholder: pemBundle serves the CAs for
	// whichever trust domain a checkpoint names.
	td := spiffeid.RequireTrustDomainFromString("bundle.file")
	var cas []*x509.Certificate
	if b, jerr := spiffebundle.Parse(td, data); jerr == nil {
		cas = b.X509Authorities()
	} else if b, perr := x509bundle.Parse(td, data); perr == nil {
		cas = b.X509Authorities()
	} else {
		return nil, fmt.Errorf("--bundle %s: neither a SPIFFE bundle (JSON: %v) nor PEM certificates (%v)", path, jerr, perr)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("--bundle %s holds no X.509 authority", path)
	}
	return cas, nil
}

// pemBundle is the CA certificates of a --bundle file, trusted for the
// trust domain a checkpoint names: the file is the operator's word on
// whom to trust, and the checkpoint's signer is reported.
type pemBundle []*x509.Certificate

func (p pemBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, p), nil
}

// readCheckpoints verifies every checkpoint in the file, one JWS a line;
// a line that does not verify is an error naming it: a forged checkpoint
// must not pass for a missing one.
func readCheckpoints(path string, bundle pemBundle) ([]boltstore.Expectation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--checkpoint: %w", err)
	}
	defer f.Close()
	var out []boltstore.Expectation
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), checkpoint.MaxSize+1)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		cp, err := checkpoint.Verify(line, bundle)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, boltstore.Expectation{Seq: cp.Seq, Hash: cp.Hash,
			Source: fmt.Sprintf("the checkpoint %s signed at %s (%s:%d)", cp.ID, cp.Time.Format(time.RFC3339), path, n)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--checkpoint %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--checkpoint %s holds no checkpoint", path)
	}
	return out, nil
}

func verifyExport(c *cli.Context, path string, expect []boltstore.Expectation) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	res, err := boltstore.VerifyExport(bufio.NewReader(f), expect...)
	return reportVerify(c, res, err)
}

func runAuditPrune(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	through := c.Uint64("through")
	f, err := os.Open(c.String("export"))
	if err != nil {
		return err
	}
	defer f.Close()
	// The export must verify and hold record `through` as the database
	// has it; PruneAudit then verifies the database once more.
	held, err := exportedHash(f, through)
	if err != nil {
		return fmt.Errorf("not pruned: --export %s: %w", c.String("export"), err)
	}
	if ec := etcdOfConfig(c); ec != nil {
		return pruneEtcd(c, ec, through, held)
	}
	path, err := dbPath(c)
	if err != nil {
		return err
	}
	res, err := boltstore.VerifyAudit(path, nil, boltstore.Expectation{Seq: through, Hash: held, Source: "the export " + c.String("export")})
	if err != nil {
		return fmt.Errorf("not pruned: %w", err)
	}
	if err := boltstore.PruneAudit(path, through); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "pruned records %d to %d; the chain now starts at record %d (%d records left)\n", res.PrunedThrough+1, through, through+1, res.HeadSeq-through)
	return nil
}

// exportedHash verifies an export and returns the hash of its record seq.
func exportedHash(f io.ReadSeeker, seq uint64) (string, error) {
	if _, err := boltstore.VerifyExport(bufio.NewReader(f)); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	dec := json.NewDecoder(bufio.NewReader(f))
	for {
		var e broker.Event
		if err := dec.Decode(&e); err == io.EOF {
			return "", fmt.Errorf("does not hold record %d: export the log before pruning it", seq)
		} else if err != nil {
			return "", err
		}
		if e.Seq == seq {
			return e.Hash, nil
		}
	}
}
