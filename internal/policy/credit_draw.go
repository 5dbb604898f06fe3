package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Drawing credit down. A scope's balance is spent only once one of its
// periodic token or cost budgets refuses an ask: the meter then draws a
// slice of the balance (the shortfall, at least a tenth of the budget) and
// turns it into a grant that raises that budget until the window ends. So
// every engine enforces credit as it enforces limits — shared across
// instances, never over-admitted, unchanged by a Redis loss (the grant is
// policy, in the database). When the window has ended and its use is in
// the ledger, what the window did not use beyond its budget goes back to
// the balance (SettleDraws): the balance ends charged exactly the use
// beyond the budget, and at most what was drawn.

// CreditGrantCreator is the CreatedBy of the grants credit draws make: no
// user id looks like it.
const CreditGrantCreator = "credit"

// The kinds of credit entries a draw makes.
const (
	CreditDraw   = "draw"
	CreditRefund = "refund"
)

// DrawInput is a refusal that credit may lift.
type DrawInput struct {
	Scope     string
	TenantID  string
	Dimension quota.Dimension // DimTokens or DimCost
	Window    quota.Window    // WindowDay or WindowMonth
	// Period names the window in the tenant's zone (usage.DayPeriod or
	// MonthPeriod), End is when it ends.
	Period string
	End    time.Time
	// Need is how much the ask needs beyond what the budget has left.
	Need int64
}

// CreditDrawRecord is one draw, until its window is settled.
type CreditDrawRecord struct {
	ID        string
	Scope     string
	TenantID  string
	Dimension string // "tokens" or "cost"
	Period    string
	Amount    int64
	// BaseLimit is the budget without credit grants when drawn: the use
	// beyond it is what credit pays for.
	BaseLimit int64
	GrantID   string
	End       time.Time
	CreatedAt time.Time
}

// CreditDrawTx is a credit transaction that also keeps draws.
type CreditDrawTx interface {
	CreditTx
	InsertCreditDraw(d *CreditDrawRecord) error
	// CreditDrawsDue lists draws whose window ended before t and that are
	// not settled, oldest first, at most limit.
	CreditDrawsDue(t time.Time, limit int) ([]*CreditDrawRecord, error)
	// SettleCreditDraws marks the unsettled draws of one scope, dimension
	// and period settled and returns what it marked: how many, their
	// amounts' sum and their least base limit (n 0: another instance did).
	SettleCreditDraws(scope, dimension, period string, at time.Time) (n int, total, base int64, err error)
}

// CreditDrawStore runs credit draws: ChangeCredits's commit also counts
// as a policy change (other instances reload: the grant is in force).
type CreditDrawStore interface {
	ChangeCredits(ctx context.Context, fn func(CreditDrawTx) error) error
	UpdateCreditDraws(ctx context.Context, fn func(CreditDrawTx) error) error
}

// ErrNoCredit is Draw's answer when the scope holds no credit of that
// kind.
var ErrNoCredit = errors.New("no prepaid credit")

// minDrawShare: a draw takes at least this share of the budget, so that a
// scope past its budget does not draw (a database write and a policy
// reload on every instance) for every call.
const minDrawShare = 10

// Draw lifts a refusal of in.Scope's budget with its credit: it takes a
// slice of the balance into a grant on that budget until the window
// ends, in one transaction, and reloads the policy. ErrNoCredit when the
// balance is empty.
func (c *Credits) Draw(ctx context.Context, in DrawInput) (*Grant, error) {
	st, ok := c.store.(CreditDrawStore)
	if !ok {
		return nil, ErrNoCredit
	}
	if in.Dimension != quota.DimTokens && in.Dimension != quota.DimCost {
		return nil, ErrNoCredit
	}
	if c.knownEmpty(in.Scope, in.Dimension) {
		return nil, ErrNoCredit
	}
	var have *CreditBalance
	if err := c.store.ViewCredits(ctx, func(tx CreditTx) (err error) {
		have, err = tx.CreditBalance(in.Scope)
		return err
	}); err != nil {
		// The database is away: the refusal stands, and the next ones of
		// this scope do not each wait on it (nor log it) for a while.
		c.markEmpty(in.Scope, in.Dimension)
		return nil, err
	}
	if in.Dimension == quota.DimTokens && have.Tokens <= 0 || in.Dimension == quota.DimCost && have.CostMicros <= 0 {
		c.markEmpty(in.Scope, in.Dimension)
		return nil, ErrNoCredit
	}
	var (
		g   *Grant
		err error
	)
	for try := 0; try < 3; try++ {
		if g, err = c.draw(ctx, st, in); !errors.Is(err, errDrawRace) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if err := c.pol.mgr.Reload(ctx); err != nil {
		c.pol.log.Warn("policy reload after a credit draw failed", slog.String("error", err.Error()))
	}
	return g, nil
}

// errDrawRace: a concurrent draw spent the balance this one read.
var errDrawRace = errors.New("credit draw: the balance changed meanwhile")

func (c *Credits) draw(ctx context.Context, st CreditDrawStore, in DrawInput) (*Grant, error) {
	now := c.now().UTC().Truncate(time.Microsecond)
	var g *Grant
	err := st.ChangeCredits(ctx, func(tx CreditDrawTx) error {
		b, err := tx.CreditBalance(in.Scope)
		if err != nil {
			return err
		}
		have := b.Tokens
		if in.Dimension == quota.DimCost {
			have = b.CostMicros
		}
		if have <= 0 {
			return ErrNoCredit
		}
		// The budget without credit grants, from one snapshot (in.Limit
		// may be from an older one, without another instance's draw).
		r := c.pol.mgr.Current().Effective(in.Scope)
		base := grantAmount(r.Spec, in.Dimension, in.Window)
		for _, og := range r.Grants {
			if og.CreatedBy == CreditGrantCreator {
				base -= grantAmount(og.Limits, in.Dimension, in.Window)
			}
		}
		amount := min(have, max(in.Need, max(base, 0)/minDrawShare, 1))
		spec := Spec{}
		if in.Dimension == quota.DimCost {
			spec.Cost = &Budget{Amount: amount, Window: in.Window, Money: true}
		} else {
			spec.Tokens = Budgets{{Amount: amount, Window: in.Window}}
		}
		drawID := id.NewAt("drw", now)
		g = &Grant{ID: id.NewAt("grt", now), Scope: in.Scope, TenantID: in.TenantID, Limits: spec,
			Reason:    fmt.Sprintf("prepaid credit drawn for %s %s (%s)", in.Dimension, in.Period, drawID),
			CreatedBy: CreditGrantCreator, CreatedAt: now, ExpiresAt: in.End.UTC().Truncate(time.Microsecond)}
		if !g.ExpiresAt.After(now) {
			return ErrNoCredit // the window is over: nothing to lift
		}
		if err := tx.InsertGrant(g); err != nil {
			return err
		}
		e := &CreditEntry{ID: id.NewAt("crd", now), Scope: in.Scope, TenantID: in.TenantID, Kind: CreditDraw, At: now,
			Note: fmt.Sprintf("%s %s beyond its budget (grant %s)", in.Dimension, in.Period, g.ID)}
		if in.Dimension == quota.DimCost {
			e.CostMicros = -amount
		} else {
			e.Tokens = -amount
		}
		if err := tx.AddCredit(e); err != nil {
			return err
		}
		if e.BalanceTokens < 0 || e.BalanceCostMicros < 0 {
			return errDrawRace // rolled back; read again
		}
		d := &CreditDrawRecord{ID: drawID, Scope: in.Scope, TenantID: in.TenantID, Dimension: in.Dimension.String(),
			Period: in.Period, Amount: amount, BaseLimit: base, GrantID: g.ID, End: g.ExpiresAt, CreatedAt: now}
		if err := tx.InsertCreditDraw(d); err != nil {
			return err
		}
		return c.audit(tx, tenancy.SystemPrincipal, in.TenantID, "credit.draw", "credit", in.Scope, d)
	})
	return g, err
}

// grantAmount is spec's amount of dimension d's budget of window w.
func grantAmount(spec Spec, d quota.Dimension, w quota.Window) int64 {
	if d == quota.DimCost {
		if spec.Cost != nil && spec.Cost.Window == w {
			return spec.Cost.Amount
		}
		return 0
	}
	var n int64
	for _, b := range spec.Tokens {
		if b.Window == w {
			n += b.Amount
		}
	}
	return n
}

// WindowUse is the ledger's use of a scope in a period: tokens, or
// micro-USD of cost.
type WindowUse func(ctx context.Context, scope, dimension, period string) (int64, error)

// SettleDraws settles the draws whose window ended before settleBefore:
// per scope, dimension and period, the use beyond the budget the window
// started with (the ledger's, through use) is what the credit pays, at
// most what was drawn; the rest goes back to the balance as a refund
// entry. A window is settled once across instances (the draws' rows are
// marked in the same transaction). It returns how many windows it
// settled.
func (c *Credits) SettleDraws(ctx context.Context, settleBefore time.Time, use WindowUse) (int, error) {
	st, ok := c.store.(CreditDrawStore)
	if !ok {
		return 0, nil
	}
	var due []*CreditDrawRecord
	if err := st.UpdateCreditDraws(ctx, func(tx CreditDrawTx) (err error) {
		due, err = tx.CreditDrawsDue(settleBefore, 500)
		return err
	}); err != nil {
		return 0, err
	}
	// The due rows only name the windows: each window's draws are summed
	// from the rows its settling marks, in that transaction, so a window
	// with more draws than one listing holds is still settled whole.
	type window struct{ scope, dim, period, tenant string }
	var order []window
	seen := map[window]bool{}
	for _, d := range due {
		w := window{d.Scope, d.Dimension, d.Period, d.TenantID}
		if !seen[w] {
			seen[w] = true
			order = append(order, w)
		}
	}
	settled := 0
	for _, w := range order {
		used, err := use(ctx, w.scope, w.dim, w.period)
		if err != nil {
			return settled, err
		}
		now := c.now().UTC().Truncate(time.Microsecond)
		err = st.UpdateCreditDraws(ctx, func(tx CreditDrawTx) error {
			n, total, base, err := tx.SettleCreditDraws(w.scope, w.dim, w.period, now)
			if err != nil || n == 0 {
				return err
			}
			paid := min(max(used-base, 0), total)
			refund := total - paid
			if refund == 0 {
				return nil
			}
			e := &CreditEntry{ID: id.NewAt("crd", now), Scope: w.scope, TenantID: w.tenant, Kind: CreditRefund, At: now,
				Note: fmt.Sprintf("%s %s: drawn %d, used beyond the budget %d", w.dim, w.period, total, paid)}
			if w.dim == quota.DimCost.String() {
				e.CostMicros = refund
			} else {
				e.Tokens = refund
			}
			if err := tx.AddCredit(e); err != nil {
				return err
			}
			return c.audit(tx, tenancy.SystemPrincipal, w.tenant, "credit.refund", "credit", w.scope, e)
		})
		if err != nil {
			return settled, err
		}
		settled++
	}
	return settled, nil
}

// emptyFor is how long a scope found without credit (or whose balance
// could not be read) is not asked again (a refused scope asks on every
// call); a top-up or redemption through this instance ends it at once.
const emptyFor = 5 * time.Second

// emptyKey is a scope's balance of one kind: a scope with cost credit
// and no token credit is empty for tokens only.
type emptyKey struct {
	scope string
	dim   quota.Dimension
}

// knownEmpty reports whether scope was found without credit of dimension
// d lately.
func (c *Credits) knownEmpty(scope string, d quota.Dimension) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.empty[emptyKey{scope, d}]
	return ok && c.now().Sub(at) < emptyFor
}

func (c *Credits) markEmpty(scope string, d quota.Dimension) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.empty == nil || len(c.empty) >= 10_000 {
		c.empty = map[emptyKey]time.Time{} // bounded: forget them all
	}
	c.empty[emptyKey{scope, d}] = c.now()
}

// forgetEmpty ends scope's known-empty marks (credit was added).
func (c *Credits) forgetEmpty(scope string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.empty, emptyKey{scope, quota.DimTokens})
	delete(c.empty, emptyKey{scope, quota.DimCost})
}
