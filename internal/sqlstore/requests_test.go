package sqlstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// TestQuotaRequests runs the quota request queries on both engines.
func TestQuotaRequests(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func(*testing.T) *Store) {
		t.Run("RoundTrip", func(t *testing.T) { t.Parallel(); testRequestRoundTrip(t, open(t)) })
		t.Run("PendingBoundUnderConcurrency", func(t *testing.T) { t.Parallel(); testRequestPendingBound(t, open(t)) })
	})
}

func updateRequests(t *testing.T, s *Store, fn func(policy.RequestTx) error) {
	t.Helper()
	if err := s.UpdateRequests(context.Background(), fn); err != nil {
		t.Fatalf("UpdateRequests = %v, want nil", err)
	}
}

func viewRequests(t *testing.T, s *Store, fn func(policy.RequestTx) error) {
	t.Helper()
	if err := s.ViewRequests(context.Background(), fn); err != nil {
		t.Fatalf("ViewRequests = %v, want nil", err)
	}
}

func newRequest(tenantID, scope, user string, at time.Time) *policy.QuotaRequest {
	return &policy.QuotaRequest{ID: id.NewAt("qrq", at), TenantID: tenantID, Scope: scope, Dimension: "tokens_day", Amount: 50_000,
		Limits:   policy.Spec{Tokens: policy.Budgets{{Amount: 50_000, Window: quota.WindowDay}}},
		Duration: policy.Duration(72 * time.Hour), Reason: "exam week", RequestedBy: user, Status: policy.RequestPending, CreatedAt: at}
}

func testRequestRoundTrip(t *testing.T, s *Store) {
	w := newWorld(t, s)
	a1 := newRequest(w.A.ID, "user/"+w.ua2.ID, w.ua2.ID, base)
	a2 := newRequest(w.A.ID, "project/"+w.pa1.ID, w.ua2.ID, base.Add(time.Second))
	a2.Dimension, a2.Amount, a2.Limits = "requests", 30, policy.Spec{Requests: &policy.RateSpec{Limit: 30, Period: time.Minute}}
	b1 := newRequest(w.B.ID, "user/"+w.ub1.ID, w.ub1.ID, base.Add(2*time.Second))
	before, err := s.ChangeVersion(context.Background())
	if err != nil {
		t.Fatalf("ChangeVersion = %v, want nil", err)
	}
	updateRequests(t, s, func(tx policy.RequestTx) error {
		for _, q := range []*policy.QuotaRequest{a1, a2, b1} {
			if err := tx.InsertQuotaRequest(q); err != nil {
				return err
			}
		}
		return nil
	})
	if after, err := s.ChangeVersion(context.Background()); err != nil || after != before+1 {
		t.Fatalf("ChangeVersion after UpdateRequests = %d, %v, want %d", after, err, before+1)
	}
	viewRequests(t, s, func(tx policy.RequestTx) error {
		got, err := tx.QuotaRequest(a2.ID)
		if err != nil {
			return err
		}
		same(t, got, a2)
		_, err = tx.QuotaRequest("qrq_missing")
		wantCode(t, err, errs.NotFound, "-")
		for _, c := range []struct {
			name string
			f    policy.RequestFilter
			want []*policy.QuotaRequest
		}{
			{"all", policy.RequestFilter{}, []*policy.QuotaRequest{a1, a2, b1}},
			{"tenant", policy.RequestFilter{TenantID: w.A.ID}, []*policy.QuotaRequest{a1, a2}},
			{"requester", policy.RequestFilter{RequestedBy: w.ub1.ID}, []*policy.QuotaRequest{b1}},
			{"scope", policy.RequestFilter{Scope: "project/" + w.pa1.ID}, []*policy.QuotaRequest{a2}},
			{"status", policy.RequestFilter{Status: policy.RequestApproved}, []*policy.QuotaRequest{}},
			{"page", policy.RequestFilter{Page: tenancy.Page{Limit: 1, After: a1.ID}}, []*policy.QuotaRequest{a2}},
		} {
			got, err := tx.QuotaRequests(c.f)
			if err != nil {
				return err
			}
			if len(got) != len(c.want) {
				t.Errorf("%s: got %d requests, want %d", c.name, len(got), len(c.want))
				continue
			}
			same(t, got, c.want)
		}
		n, err := tx.PendingQuotaRequests(w.ua2.ID)
		if err != nil || n != 2 {
			t.Errorf("PendingQuotaRequests(ua2) = %d, %v, want 2, nil", n, err)
		}
		return nil
	})

	// A decision lands once; the second finds it no longer pending.
	decided := *a1
	at, exp := base.Add(time.Hour), base.Add(73*time.Hour)
	decided.Status, decided.DecidedBy, decided.DecidedAt, decided.Note = policy.RequestApproved, w.ua1.ID, &at, "ok"
	decided.GrantedAmount, decided.GrantID, decided.ExpiresAt = 60_000, "grt_x", &exp
	updateRequests(t, s, func(tx policy.RequestTx) error { return tx.DecideQuotaRequest(&decided) })
	again := decided
	again.Status, again.Note = policy.RequestDenied, "no"
	err = s.UpdateRequests(context.Background(), func(tx policy.RequestTx) error { return tx.DecideQuotaRequest(&again) })
	wantCode(t, err, errs.Conflict, "-")
	viewRequests(t, s, func(tx policy.RequestTx) error {
		got, err := tx.QuotaRequest(a1.ID)
		if err != nil {
			return err
		}
		same(t, got, &decided)
		if n, err := tx.PendingQuotaRequests(w.ua2.ID); err != nil || n != 1 {
			t.Errorf("PendingQuotaRequests(ua2) after a decision = %d, %v, want 1, nil", n, err)
		}
		ofStatus, err := tx.QuotaRequests(policy.RequestFilter{Status: policy.RequestApproved})
		if err != nil {
			return err
		}
		same(t, ofStatus, []*policy.QuotaRequest{&decided})
		return nil
	})
}

// testRequestPendingBound: writers that each count a user's pending
// requests and insert one only below the bound never overshoot it, however
// many run at once (on PostgreSQL this is the per-user lock's doing).
func testRequestPendingBound(t *testing.T, s *Store) {
	w := newWorld(t, s)
	const writers, bound = 12, 3
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- s.UpdateRequests(context.Background(), func(tx policy.RequestTx) error {
				n, err := tx.PendingQuotaRequests(w.ua2.ID)
				if err != nil || n >= bound {
					return err
				}
				return tx.InsertQuotaRequest(newRequest(w.A.ID, "user/"+w.ua2.ID, w.ua2.ID, base.Add(time.Duration(i)*time.Millisecond)))
			})
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatalf("UpdateRequests = %v, want nil", err)
		}
	}
	viewRequests(t, s, func(tx policy.RequestTx) error {
		if n, err := tx.PendingQuotaRequests(w.ua2.ID); err != nil || n != bound {
			t.Errorf("pending after %d racing writers = %d, %v, want %d", writers, n, err, bound)
		}
		return nil
	})
}

// TestCredits runs the prepaid credit queries on both engines.
func TestCredits(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func(*testing.T) *Store) {
		t.Run("ConcurrentTopUps", func(t *testing.T) { t.Parallel(); testCreditConcurrentTopUps(t, open(t)) })
		t.Run("Codes", func(t *testing.T) { t.Parallel(); testCreditCodes(t, open(t)) })
	})
}

// testCreditConcurrentTopUps: concurrent additions to one balance lose
// none, and each entry records a distinct balance after it.
func testCreditConcurrentTopUps(t *testing.T, s *Store) {
	w := newWorld(t, s)
	scope := "user/" + w.ua2.ID
	const writers = 16
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- s.UpdateCredits(context.Background(), func(tx policy.CreditTx) error {
				return tx.AddCredit(&policy.CreditEntry{ID: id.New("crd"), Scope: scope, TenantID: w.A.ID, Kind: policy.CreditTopUp,
					Tokens: 100, CostMicros: 1, At: base.Add(time.Duration(i) * time.Second)})
			})
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatalf("UpdateCredits = %v, want nil", err)
		}
	}
	if err := s.ViewCredits(context.Background(), func(tx policy.CreditTx) error {
		b, err := tx.CreditBalance(scope)
		if err != nil {
			return err
		}
		if b.Tokens != writers*100 || b.CostMicros != writers || b.TenantID != w.A.ID || b.UpdatedAt == nil {
			t.Errorf("balance after %d top-ups of 100: got %+v, want %d tokens, %d micro-USD", writers, b, writers*100, writers)
		}
		es, err := tx.CreditEntries(scope, tenancy.Page{Limit: 100})
		if err != nil {
			return err
		}
		seen := map[int64]bool{}
		for _, e := range es {
			seen[e.BalanceTokens] = true
		}
		if len(es) != writers || len(seen) != writers {
			t.Errorf("entries: got %d with %d distinct balances, want %d of each", len(es), len(seen), writers)
		}
		page, err := tx.CreditEntries(scope, tenancy.Page{Limit: 5, After: es[4].ID})
		if err != nil {
			return err
		}
		same(t, page, es[5:10])
		none, err := tx.CreditBalance("user/" + w.ub1.ID)
		if err != nil || none.Tokens != 0 || none.UpdatedAt != nil {
			t.Errorf("balance of a scope never credited: got %+v, %v, want zero", none, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("ViewCredits = %v, want nil", err)
	}
}

func testCreditCodes(t *testing.T, s *Store) {
	w := newWorld(t, s)
	exp := base.Add(time.Hour)
	a := &policy.CreditCode{ID: id.New("ccd"), TenantID: w.A.ID, Prefix: "slc_abcdef", Hash: "aa", Tokens: 5000, CostMicros: 250_000,
		Note: "workshop", CreatedBy: w.ua1.ID, CreatedAt: base, ExpiresAt: &exp}
	b := &policy.CreditCode{ID: id.New("ccd"), TenantID: w.B.ID, Scope: "project/" + w.pb1.ID, Prefix: "slc_ghijkl", Hash: "bb",
		Tokens: 1, CreatedBy: w.admin.ID, CreatedAt: base}
	err := s.UpdateCredits(context.Background(), func(tx policy.CreditTx) error {
		for _, c := range []*policy.CreditCode{a, b} {
			if err := tx.InsertCreditCode(c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("InsertCreditCode = %v, want nil", err)
	}
	err = s.UpdateCredits(context.Background(), func(tx policy.CreditTx) error {
		return tx.InsertCreditCode(&policy.CreditCode{ID: id.New("ccd"), TenantID: w.A.ID, Prefix: "x", Hash: "aa", CreatedBy: "u", CreatedAt: base})
	})
	wantCode(t, err, errs.Conflict, "-")
	redeemed := *a
	at := base.Add(time.Minute)
	redeemed.RedeemedBy, redeemed.RedeemedScope, redeemed.RedeemedAt = w.ua2.ID, "user/"+w.ua2.ID, &at
	if err := s.UpdateCredits(context.Background(), func(tx policy.CreditTx) error { return tx.RedeemCreditCode(&redeemed) }); err != nil {
		t.Fatalf("RedeemCreditCode = %v, want nil", err)
	}
	err = s.UpdateCredits(context.Background(), func(tx policy.CreditTx) error { return tx.RedeemCreditCode(&redeemed) })
	wantCode(t, err, errs.Conflict, "code")
	if err := s.ViewCredits(context.Background(), func(tx policy.CreditTx) error {
		got, err := tx.CreditCodeByHash("aa")
		if err != nil {
			return err
		}
		same(t, got, &redeemed)
		_, err = tx.CreditCodeByHash("cc")
		wantCode(t, err, errs.NotFound, "-")
		ofB, err := tx.CreditCodes(w.B.ID, tenancy.Page{Limit: 10})
		if err != nil {
			return err
		}
		same(t, ofB, []*policy.CreditCode{b})
		return nil
	}); err != nil {
		t.Fatalf("ViewCredits = %v, want nil", err)
	}
}
