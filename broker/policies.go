package broker

import (
	"context"
	"errors"
	"maps"
	"slices"
)

// CollectPolicies deletes the shared policies that no intent or live
// lease names, of every backend that shares them (PolicyCollector), and
// returns how many it deleted. Each deletion is marked in the store first,
// in a transaction that checks nothing names the policy, so an issue
// either named it before (and the deletion is not made) or waits for it
// and writes the policy again. Marks left by a deletion that did not
// finish are cleared first. Run calls it with reconciliation.
func (s Leases) CollectPolicies(ctx context.Context) (int, error) {
	use, err := stored(s.store.PolicyUse(ctx))
	if err != nil {
		return 0, err
	}
	if len(use.Deleting) > 0 {
		if _, err := s.apply(ctx, Change{DoneDeleting: use.Deleting}); err != nil {
			return 0, err
		}
	}
	n := 0
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(s.backends)) {
		pc, ok := s.backends[name].(PolicyCollector)
		if !ok {
			continue
		}
		policies, err := pc.Policies(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range policies {
			if use.Live[p] {
				continue
			}
			deleted, err := s.collectPolicy(ctx, pc, p)
			if deleted {
				n++
			}
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// collectPolicy deletes one policy nothing named when it was listed,
// unless an issue has named it since.
func (s *core) collectPolicy(ctx context.Context, pc PolicyCollector, name string) (bool, error) {
	_, err := s.apply(ctx, Change{MarkDeleting: []string{name}})
	var failed *ConditionFailed
	if errors.As(err, &failed) {
		return false, nil // in use again
	}
	if err != nil {
		return false, err
	}
	derr := pc.DeletePolicy(ctx, name)
	_, err = s.apply(ctx, Change{DoneDeleting: []string{name}})
	return derr == nil, errors.Join(derr, err)
}
