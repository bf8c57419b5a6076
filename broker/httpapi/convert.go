package httpapi

import (
	"fmt"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/templates"
)

// The wire types in broker/api mirror the domain's; these functions are
// the only place that copies one into the other.

func leaseOut(l *broker.Lease) api.Lease {
	return api.Lease{
		ID:              l.ID,
		Agent:           l.Agent,
		Task:            l.Task,
		TemplateVersion: l.TemplateVersion,
		Backend:         l.Backend,
		Params:          l.Params,
		Reason:          l.Reason,
		TraceID:         l.TraceID,
		RequestID:       l.RequestID,
		Tier:            l.Tier,
		ApprovalID:      l.ApprovalID,
		Replica:         l.Replica,
		Refs: api.Refs{
			TokenAccessor: l.Refs.TokenAccessor,
			Policy:        l.Refs.Policy,
			VaultLeaseID:  l.Refs.VaultLeaseID,
			Serial:        l.Refs.Serial,
			MintAccessor:  l.Refs.MintAccessor,
			Group:         l.Refs.Group,
		},
		IssuedAt:     l.IssuedAt.UTC(),
		ExpiresAt:    l.ExpiresAt.UTC(),
		MaxExpiresAt: l.MaxExpiresAt.UTC(),
		State:        string(l.State),
		EndedAt:      utc(l.EndedAt),
		RevokeReason: l.RevokeReason,
		LastError:    l.LastError,
		Withheld:     l.Withheld,
	}
}

// EventOut is an audit event on the wire, as GET /v1/events and the
// console's live view send it.
func EventOut(e broker.Event) api.Event {
	return api.Event{
		Seq:      e.Seq,
		Time:     e.Time.UTC(),
		Type:     string(e.Type),
		Actor:    e.Actor,
		Subject:  e.Subject,
		Task:     e.Task,
		Lease:    e.Lease,
		Outcome:  e.Outcome,
		Reasons:  e.Reasons,
		Details:  e.Details,
		PrevHash: e.PrevHash,
		Hash:     e.Hash,
	}
}

func decisionOut(d templates.Decision) api.Decision {
	out := api.Decision{
		Outcome:         string(d.Outcome),
		Agent:           d.Agent,
		AgentPattern:    d.AgentPattern,
		Owner:           d.Owner,
		Task:            d.Task,
		TemplateVersion: d.TemplateVersion,
		Backend:         d.Backend,
		BackendType:     d.BackendType,
		Params:          d.Params,
		Tier:            d.Tier,
		TierWhy:         d.TierWhy,
		Approvals:       d.Approvals,
		Alert:           d.Alert,
		TTL:             api.Duration(d.TTL),
		MaxTTL:          api.Duration(d.MaxTTL),
		Rendered: api.Rendered{
			Policy: d.Rendered.Policy,
			Path:   d.Rendered.Path,
			Vars:   d.Rendered.Vars,
		},
		Trace:         make([]api.Step, len(d.Trace)),
		NextAllowedAt: utc(d.NextAllowedAt),
		EvaluatedAt:   d.EvaluatedAt.UTC(),
	}
	if n := d.Rendered.Names; n != nil {
		out.Rendered.Names = &api.Names{CommonName: n.CommonName, AltNames: n.AltNames, URISANs: n.URISANs, IPSANs: n.IPSANs}
	}
	for _, r := range d.Reasons {
		out.Reasons = append(out.Reasons, api.Reason{Code: string(r.Code), Message: r.Message, Window: r.Window, NextAllowedAt: utc(r.NextAllowedAt)})
	}
	for i, s := range d.Trace {
		out.Trace[i] = api.Step{Rule: s.Rule, Result: string(s.Result), Detail: s.Detail}
	}
	return out
}

func approvalOut(a *broker.Approval) api.Approval {
	out := api.Approval{
		ID:              a.ID,
		Agent:           a.Agent,
		Owner:           a.Owner,
		Task:            a.Task,
		TemplateVersion: a.TemplateVersion,
		Backend:         a.Backend,
		Params:          a.Params,
		Reason:          a.Reason,
		TraceID:         a.TraceID,
		RequestID:       a.RequestID,
		Rendered: api.ApprovalRendered{
			Policy:     a.Rendered.Policy,
			Path:       a.Rendered.Path,
			Vars:       a.Rendered.Vars,
			CommonName: a.Rendered.CommonName,
			AltNames:   a.Rendered.AltNames,
			URISANs:    a.Rendered.URISANs,
			IPSANs:     a.Rendered.IPSANs,
		},
		TTL:        api.Duration(a.TTL),
		MaxTTL:     api.Duration(a.MaxTTL),
		Tier:       a.Tier,
		TierWhy:    a.TierWhy,
		Required:   a.Required,
		Status:     string(a.Status),
		CreatedAt:  utc(a.CreatedAt),
		ExpiresAt:  utc(a.ExpiresAt),
		DecidedAt:  utc(a.DecidedAt),
		PickupBy:   utc(a.PickupBy),
		ConsumedAt: utc(a.ConsumedAt),
		LeaseID:    a.LeaseID,
	}
	for _, r := range a.Reasons {
		out.Reasons = append(out.Reasons, api.ApprovalReason{Code: r.Code, Message: r.Message, Window: r.Window})
	}
	for _, r := range a.Reviews {
		out.Reviews = append(out.Reviews, api.Review{Approver: r.Approver, Email: r.Email, Decision: string(r.Decision), Reason: r.Reason, At: utc(r.At)})
	}
	return out
}

func entryOut(a *templates.Agent) api.AgentEntry {
	return api.AgentEntry{
		Pattern:   a.Pattern,
		Owner:     a.Owner,
		Templates: append([]string{}, a.Templates...),
		Rate:      rateString(a.Rate),
		MaxActive: a.MaxActive,
	}
}

func agentOut(r broker.AgentRecord, p *templates.Policy) api.Agent {
	out := api.Agent{
		ID:        r.ID,
		State:     string(r.State),
		Reason:    r.Reason,
		Actor:     r.Actor,
		ChangedAt: utc(r.ChangedAt),
		LastUsed:  utc(r.LastUsed),
	}
	for tmpl, t := range r.Used {
		if out.Used == nil {
			out.Used = make(map[string]time.Time, len(r.Used))
		}
		out.Used[tmpl] = t.UTC()
	}
	if out.State == "" {
		out.State = string(broker.AgentActive)
	}
	if e, ok := p.Agent(r.ID); ok {
		out.Pattern, out.Owner, out.Templates = e.Pattern, e.Owner, append([]string{}, e.Templates...)
	}
	return out
}

// rateString writes a rate the way the configuration does: "30/m".
func rateString(r templates.Rate) string {
	if r.N <= 0 || r.Per <= 0 {
		return ""
	}
	switch r.Per {
	case time.Second:
		return fmt.Sprintf("%d/s", r.N)
	case time.Minute:
		return fmt.Sprintf("%d/m", r.N)
	case time.Hour:
		return fmt.Sprintf("%d/h", r.N)
	}
	return fmt.Sprintf("%d/%s", r.N, r.Per)
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}
