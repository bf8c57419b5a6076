package broker

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidChange means a Store refused a Change before writing anything
// of it: see Change.Check.
var ErrInvalidChange = errors.New("invalid change")

// MaxIDLen bounds every ID and name a Change carries into a store's keys.
// A SPIFFE ID is at most 2048 bytes.
const MaxIDLen = 4096

// Check refuses, wrapping ErrInvalidChange, what a store could not key or
// what would never end: a lease, intent or approval without ID, agent or
// task; an ID or name that is empty where required, longer than MaxIDLen
// or holding a NUL byte (stores join keys with it); an unknown lease,
// agent or approval state; an active lease without ExpiresAt (the sweeper
// would never end it) and an open approval without its deadline; a
// retired group without its backend; an event without type, or with a
// time outside the years 1 to 9999 (its hash could not be computed).
// Events without a time are the store's to stamp.
func (c *Change) Check() error {
	for _, check := range []func() error{c.checkLeases, c.checkQueue, c.checkAgents, c.checkApprovals, c.checkMarks, c.checkEvents} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// EachAgentUpdate calls update with every agent record c changes and the
// change to make to it: state changes (SetState) first, then uses
// (RecordUse), each writing only its own fields, so a use committed after
// a pause keeps the pause. A store reads the record, changes it, writes it.
func (c *Change) EachAgentUpdate(update func(id string, change func(*AgentRecord)) error) error {
	for _, a := range c.AgentStates {
		if err := update(a.ID, func(r *AgentRecord) { r.SetState(a) }); err != nil {
			return err
		}
	}
	for _, u := range c.Uses {
		if err := update(u.Agent, func(r *AgentRecord) { r.RecordUse(u) }); err != nil {
			return err
		}
	}
	return nil
}

func (c *Change) checkLeases() error {
	for _, id := range c.DeleteIntents {
		if err := checkID("intent ID to delete", id, true); err != nil {
			return err
		}
	}
	for _, l := range c.PutIntents {
		if err := checkLease("intent", l); err != nil {
			return err
		}
	}
	for _, l := range c.PutLeases {
		if err := checkLease("lease", l); err != nil {
			return err
		}
		if !l.State.Valid() {
			return fmt.Errorf("%w: lease %s has unknown state %q", ErrInvalidChange, l.ID, l.State)
		}
		if l.State == StateActive && l.ExpiresAt.IsZero() {
			return fmt.Errorf("%w: active lease %s has no expiry", ErrInvalidChange, l.ID)
		}
	}
	return nil
}

func (c *Change) checkQueue() error {
	for _, id := range c.Dequeue {
		if err := checkID("revocation to dequeue", id, true); err != nil {
			return err
		}
	}
	for _, r := range c.Enqueue {
		if err := checkID("revocation lease ID", r.LeaseID, true); err != nil {
			return err
		}
	}
	return nil
}

func (c *Change) checkAgents() error {
	for _, a := range c.AgentStates {
		if err := checkID("agent ID", a.ID, true); err != nil {
			return err
		}
		if !validAgentState(a.State) {
			return fmt.Errorf("%w: agent %s has unknown state %q", ErrInvalidChange, a.ID, a.State)
		}
	}
	for _, u := range c.Uses {
		if err := checkID("agent ID", u.Agent, true); err != nil {
			return err
		}
	}
	for name := range c.Templates {
		if err := checkID("template name", name, true); err != nil {
			return err
		}
	}
	return nil
}

func (c *Change) checkApprovals() error {
	for _, a := range c.PutApprovals {
		if a == nil {
			return fmt.Errorf("%w: nil approval", ErrInvalidChange)
		}
		for _, f := range []struct {
			what, id string
			required bool
		}{{"approval ID", a.ID, true}, {"approval " + a.ID + " agent", a.Agent, true},
			{"approval " + a.ID + " task", a.Task, true}, {"approval " + a.ID + " request ID", a.RequestID, false}} {
			if err := checkID(f.what, f.id, f.required); err != nil {
				return err
			}
		}
		switch {
		case !a.Status.Valid():
			return fmt.Errorf("%w: approval %s has unknown status %q", ErrInvalidChange, a.ID, a.Status)
		case a.Status == ApprovalPending && a.ExpiresAt.IsZero():
			return fmt.Errorf("%w: pending approval %s has no expiry", ErrInvalidChange, a.ID)
		case a.Status == ApprovalApproved && a.PickupBy.IsZero():
			return fmt.Errorf("%w: approved approval %s has no pickup deadline", ErrInvalidChange, a.ID)
		case a.Status == ApprovalConsumed && a.LeaseID == "":
			return fmt.Errorf("%w: consumed approval %s names no lease", ErrInvalidChange, a.ID)
		}
	}
	return nil
}

// checkMarks checks the names of shared policies and groups marked or
// cleared.
func (c *Change) checkMarks() error {
	for _, names := range [][]string{c.MarkDeleting, c.DoneDeleting} {
		for _, n := range names {
			if n == "" || len(n) > MaxIDLen {
				return fmt.Errorf("%w: policy name %q", ErrInvalidChange, n)
			}
		}
	}
	names := c.ForgetGroups
	for _, g := range c.RetireGroups {
		if g.Backend == "" {
			return fmt.Errorf("%w: group %q has no backend", ErrInvalidChange, g.Group)
		}
		names = append(names[:len(names):len(names)], g.Group, g.Backend)
	}
	for _, n := range names {
		if n == "" || len(n) > MaxIDLen {
			return fmt.Errorf("%w: group %q", ErrInvalidChange, n)
		}
	}
	return nil
}

func (c *Change) checkEvents() error {
	for i, e := range c.Events {
		if e.Type == "" {
			return fmt.Errorf("%w: event %d has no type", ErrInvalidChange, i)
		}
		// The canonical encoding is RFC 3339, which has four-digit
		// years: outside them the hash cannot be computed.
		if y := e.Time.UTC().Year(); !e.Time.IsZero() && (y < 1 || y > 9999) {
			return fmt.Errorf("%w: event %d time %s is outside the years 1 to 9999", ErrInvalidChange, i, e.Time)
		}
	}
	return nil
}

func checkLease(what string, l *Lease) error {
	if l == nil {
		return fmt.Errorf("%w: nil %s", ErrInvalidChange, what)
	}
	if err := checkID(what+" ID", l.ID, true); err != nil {
		return err
	}
	if err := checkID(what+" "+l.ID+" agent", l.Agent, true); err != nil {
		return err
	}
	if err := checkID(what+" "+l.ID+" task", l.Task, true); err != nil {
		return err
	}
	return checkID(what+" "+l.ID+" request ID", l.RequestID, false)
}

func validAgentState(s AgentState) bool {
	return s == AgentActive || s == AgentPaused || s == AgentQuarantined
}

// checkID refuses what would break a key: empty, NUL, too long.
func checkID(what, id string, required bool) error {
	switch {
	case id == "" && required:
		return fmt.Errorf("%w: %s is empty", ErrInvalidChange, what)
	case strings.IndexByte(id, 0) >= 0:
		return fmt.Errorf("%w: %s %q contains a NUL byte", ErrInvalidChange, what, id)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %s is %d bytes, more than %d", ErrInvalidChange, what, len(id), MaxIDLen)
	}
	return nil
}
