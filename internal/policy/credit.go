package policy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Prepaid credit is a balance of tokens and/or cost a scope holds beside
// its periodic budgets. It never resets with the calendar: admins top it
// up, members redeem single-use codes into it, and every change is an
// entry in its history. This file keeps the balances and their history;
// drawing a balance down once a periodic budget is spent belongs to the
// meter, through credit_draw.go.

// CreditBalance is what a scope holds.
type CreditBalance struct {
	Scope       string         `json:"scope"`
	TenantID    string         `json:"tenant_id,omitempty"`
	Tokens      int64          `json:"tokens"`
	CostMicros  int64          `json:"-"`
	CostUSD     float64        `json:"cost_usd"`
	UpdatedAt   *time.Time     `json:"updated_at,omitempty"`
	Entries     []*CreditEntry `json:"entries"`
	NextEntries string         `json:"next,omitempty"`
}

// The kinds of credit entries.
const (
	CreditTopUp  = "topup"
	CreditRedeem = "redeem"
)

// CreditEntry is one change of a balance, with the balance after it.
type CreditEntry struct {
	ID                string    `json:"id"`
	Scope             string    `json:"scope"`
	TenantID          string    `json:"tenant_id,omitempty"`
	Kind              string    `json:"kind"`
	Tokens            int64     `json:"tokens"`
	CostMicros        int64     `json:"-"`
	BalanceTokens     int64     `json:"balance_tokens"`
	BalanceCostMicros int64     `json:"-"`
	Note              string    `json:"note,omitempty"`
	Actor             string    `json:"actor_user_id,omitempty"`
	CodeID            string    `json:"code_id,omitempty"`
	At                time.Time `json:"at"`
}

// MarshalJSON shows cost in US dollars.
func (e CreditEntry) MarshalJSON() ([]byte, error) {
	type plain CreditEntry
	return json.Marshal(struct {
		plain
		CostUSD        float64 `json:"cost_usd"`
		BalanceCostUSD float64 `json:"balance_cost_usd"`
	}{plain(e), float64(e.CostMicros) / 1e6, float64(e.BalanceCostMicros) / 1e6})
}

// CreditCode is a single-use code worth an amount of credit. Only its
// SHA-256 is stored; Secret is set once, in the answer that creates it.
type CreditCode struct {
	ID         string     `json:"id"`
	TenantID   string     `json:"tenant_id"`
	Scope      string     `json:"scope,omitempty"` // "" credits the redeemer's user scope
	Prefix     string     `json:"prefix"`
	Hash       string     `json:"-"`
	Secret     string     `json:"code,omitempty"`
	Tokens     int64      `json:"tokens"`
	CostMicros int64      `json:"-"`
	Note       string     `json:"note,omitempty"`
	CreatedBy  string     `json:"created_by"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RedeemedBy string     `json:"redeemed_by,omitempty"`
	// RedeemedScope is the scope the code credited.
	RedeemedScope string     `json:"redeemed_scope,omitempty"`
	RedeemedAt    *time.Time `json:"redeemed_at,omitempty"`
}

// MarshalJSON shows cost in US dollars.
func (c CreditCode) MarshalJSON() ([]byte, error) {
	type plain CreditCode
	return json.Marshal(struct {
		plain
		CostUSD float64 `json:"cost_usd"`
	}{plain(c), float64(c.CostMicros) / 1e6})
}

// CreditStore persists balances, their history and redeem codes.
type CreditStore interface {
	UpdateCredits(ctx context.Context, fn func(CreditTx) error) error
	ViewCredits(ctx context.Context, fn func(CreditTx) error) error
}

// CreditTx is a policy transaction that also reads and writes credit.
type CreditTx interface {
	Tx
	// AddCredit adds e's amounts to its scope's balance (creating it),
	// fills in e's balance after, and records e.
	AddCredit(e *CreditEntry) error
	CreditBalance(scope string) (*CreditBalance, error) // zero balance when none
	// CreditBalancesOf returns the balances some of scopes hold (none
	// for a scope without one).
	CreditBalancesOf(scopes []string) ([]*CreditBalance, error)
	CreditEntries(scope string, page tenancy.Page) ([]*CreditEntry, error)
	InsertCreditCode(c *CreditCode) error
	CreditCodeByHash(hash string) (*CreditCode, error)
	CreditCodes(tenantID string, page tenancy.Page) ([]*CreditCode, error)
	// RedeemCreditCode marks c redeemed if it is not yet, and answers
	// errs.Conflict if it is.
	RedeemCreditCode(c *CreditCode) error
}

// Credits is the prepaid credit workflow.
type Credits struct {
	store CreditStore
	pol   *Service
	now   func() time.Time

	mu    sync.Mutex
	empty map[emptyKey]time.Time // balances found empty, when
}

// NewCredits returns the workflow over store.
func NewCredits(store CreditStore, pol *Service) *Credits {
	return &Credits{store: store, pol: pol, now: time.Now}
}

// SetClock replaces the workflow's clock (tests).
func (c *Credits) SetClock(now func() time.Time) { c.now = now }

// Bounds of one top-up or code, keeping every amount exact in JSON and
// far from overflowing a balance.
const (
	maxCreditTokens = 1_000_000_000_000 // 10^12 tokens
	maxCreditUSD    = 1_000_000         // $10^6
	// MaxCodesPerCall bounds how many codes one call makes.
	MaxCodesPerCall = 100
)

// CreditAmount is an amount of credit as the API takes it.
type CreditAmount struct {
	Tokens  int64   `json:"tokens"`
	CostUSD float64 `json:"cost_usd"`
	Note    string  `json:"note"`
}

func (a CreditAmount) units() (tokens, micros int64, note string, err error) {
	if a.Tokens < 0 || a.Tokens > maxCreditTokens {
		return 0, 0, "", errs.Field(errs.Invalid, "tokens", "tokens must be from 0 to %d", int64(maxCreditTokens))
	}
	if !(a.CostUSD >= 0) || a.CostUSD > maxCreditUSD {
		return 0, 0, "", errs.Field(errs.Invalid, "cost_usd", "cost_usd must be from 0 to %d", maxCreditUSD)
	}
	micros = int64(math.Round(a.CostUSD * 1e6))
	if a.Tokens == 0 && micros == 0 {
		return 0, 0, "", errs.Field(errs.Invalid, "tokens", "give tokens and/or cost_usd above 0")
	}
	note, err = checkText("note", a.Note, false)
	return a.Tokens, micros, note, err
}

func (c *Credits) audit(tx CreditTx, p tenancy.Principal, tenantID, action, kind, objID string, after any) error {
	now := c.now().UTC()
	e := &tenancy.AuditEntry{ID: id.NewAt("aud", now), At: now, ActorUser: p.UserID, ActorKey: p.KeyID,
		TenantID: tenantID, Action: action, ObjectKind: kind, ObjectID: objID}
	e.After, _ = json.Marshal(after)
	return tx.InsertAudit(e)
}

// TopUp adds credit to a scope. Whoever may set the scope's limits may
// top it up (a tenant's own balance is a platform admin's, as its limits).
func (c *Credits) TopUp(ctx context.Context, scope string, in CreditAmount) (*CreditEntry, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	kind, oid, err := ParseScope("scope", scope)
	if err != nil {
		return nil, err
	}
	tokens, micros, note, err := in.units()
	if err != nil {
		return nil, err
	}
	var e *CreditEntry
	err = c.store.UpdateCredits(ctx, func(tx CreditTx) error {
		ref, err := resolveScope(tx, kind, oid)
		if err != nil {
			return err
		}
		if err := mayChange(p, kind, ref.tenant); err != nil {
			return err
		}
		now := c.now().UTC().Truncate(time.Microsecond)
		e = &CreditEntry{ID: id.NewAt("crd", now), Scope: scope, TenantID: ref.tenant, Kind: CreditTopUp, Tokens: tokens,
			CostMicros: micros, Note: note, Actor: p.UserID, At: now}
		if err := tx.AddCredit(e); err != nil {
			return err
		}
		return c.audit(tx, p, ref.tenant, "credit.topup", "credit", e.ID, e)
	})
	if err != nil {
		return nil, err
	}
	c.forgetEmpty(e.Scope)
	return e, nil
}

// Balance returns a scope's balance and a page of its history, newest
// last. Everyone who may read the scope's limits may read it: admins of
// its tenant, and members for the scopes of their own usage page.
func (c *Credits) Balance(ctx context.Context, scope string, page tenancy.Page) (*CreditBalance, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if scope == "" {
		scope = ScopeName(KindUser, p.UserID)
	}
	kind, oid, err := ParseScope("scope", scope)
	if err != nil {
		return nil, err
	}
	if page.Limit <= 0 {
		page.Limit = tenancy.DefaultPageSize
	}
	var b *CreditBalance
	err = c.store.ViewCredits(ctx, func(tx CreditTx) error {
		ref, err := resolveScope(tx, kind, oid)
		if err != nil {
			return err
		}
		if err := mayRead(p, kind, oid, ref); err != nil {
			return err
		}
		if b, err = tx.CreditBalance(scope); err != nil {
			return err
		}
		b.TenantID = ref.tenant
		b.Entries, err = tx.CreditEntries(scope, page)
		return err
	})
	if err != nil {
		return nil, err
	}
	b.CostUSD = float64(b.CostMicros) / 1e6
	if n := len(b.Entries); n > 0 && n == page.Limit {
		b.NextEntries = b.Entries[n-1].ID
	}
	return b, nil
}

// CodeInput makes Count codes (default 1) of the same worth. TenantID
// defaults to a tenant admin's own; Scope, when set, is the scope every
// code credits (else each credits its redeemer's user scope).
type CodeInput struct {
	CreditAmount
	TenantID  string     `json:"tenant_id"`
	Scope     string     `json:"scope"`
	Count     int        `json:"count"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// codePrefix starts every redeem code, so it is not mistaken for a key.
const codePrefix = "slc_"

func newCode() (secret, hash string) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("policy: crypto/rand failed: " + err.Error())
	}
	secret = codePrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, hashCode(secret)
}

func hashCode(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// CreateCodes makes single-use redeem codes; their secrets are in this
// answer only. Admins of the tenant make them (platform admins for any
// tenant); a code bound to a scope needs the right to top that scope up.
func (c *Credits) CreateCodes(ctx context.Context, in CodeInput) ([]*CreditCode, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	tokens, micros, note, err := in.units()
	if err != nil {
		return nil, err
	}
	if in.Count == 0 {
		in.Count = 1
	}
	if in.Count < 1 || in.Count > MaxCodesPerCall {
		return nil, errs.Field(errs.Invalid, "count", "count must be from 1 to %d", MaxCodesPerCall)
	}
	tenantID := in.TenantID
	if tenantID == "" {
		tenantID = p.TenantID
	}
	if tenantID == "" {
		return nil, errs.Field(errs.Invalid, "tenant_id", "tenant_id is required")
	}
	if !p.AdminOf(tenantID) {
		if tenantID != p.TenantID {
			return nil, errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID)
		}
		return nil, errs.E(errs.Forbidden, "only an admin of the tenant may make redeem codes")
	}
	now := c.now().UTC().Truncate(time.Microsecond)
	if in.ExpiresAt != nil && !in.ExpiresAt.After(now) {
		return nil, errs.Field(errs.Invalid, "expires_at", "expires_at must be in the future")
	}
	var out []*CreditCode
	err = c.store.UpdateCredits(ctx, func(tx CreditTx) error {
		if _, err := tx.Tenant(tenantID); errs.Is(err, errs.NotFound) {
			return errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID)
		} else if err != nil {
			return err
		}
		if in.Scope != "" {
			kind, oid, err := ParseScope("scope", in.Scope)
			if err != nil {
				return err
			}
			ref, err := resolveScope(tx, kind, oid)
			if err != nil {
				return err
			}
			if ref.tenant != tenantID {
				return errs.Field(errs.NotFound, "scope", "scope %s not found in tenant %s", in.Scope, tenantID)
			}
			if err := mayChange(p, kind, ref.tenant); err != nil {
				return err
			}
		}
		for range in.Count {
			secret, hash := newCode()
			code := &CreditCode{ID: id.NewAt("ccd", now), TenantID: tenantID, Scope: in.Scope, Prefix: secret[:len(codePrefix)+6],
				Hash: hash, Tokens: tokens, CostMicros: micros, Note: note, CreatedBy: p.UserID, CreatedAt: now}
			if in.ExpiresAt != nil {
				e := in.ExpiresAt.UTC().Truncate(time.Microsecond)
				code.ExpiresAt = &e
			}
			if err := tx.InsertCreditCode(code); err != nil {
				return err
			}
			if err := c.audit(tx, p, tenantID, "credit_code.create", "credit_code", code.ID, code); err != nil {
				return err
			}
			code.Secret = secret // after the audit entry: never stored
			out = append(out, code)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Codes lists a tenant's redeem codes (never their secrets) to its admins.
func (c *Credits) Codes(ctx context.Context, tenantID string, page tenancy.Page) ([]*CreditCode, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if tenantID == "" {
		tenantID = p.TenantID
	}
	if !p.AdminOf(tenantID) {
		if tenantID != p.TenantID {
			return nil, errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID)
		}
		return nil, errs.E(errs.Forbidden, "only an admin of the tenant may list redeem codes")
	}
	if page.Limit <= 0 {
		page.Limit = tenancy.DefaultPageSize
	}
	var out []*CreditCode
	err = c.store.ViewCredits(ctx, func(tx CreditTx) (err error) {
		out, err = tx.CreditCodes(tenantID, page)
		return err
	})
	return out, err
}

// RedeemInput redeems a code.
type RedeemInput struct {
	Code string `json:"code"`
}

// Redeem credits a code's worth to its scope, or to the redeemer's user
// scope, once. A code of another tenant is as unknown as a wrong one.
func (c *Credits) Redeem(ctx context.Context, in RedeemInput) (*CreditEntry, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	secret := strings.TrimSpace(in.Code)
	if !strings.HasPrefix(secret, codePrefix) || len(secret) > 100 {
		return nil, errs.Field(errs.Invalid, "code", "a redeem code starts with %s", codePrefix)
	}
	unknown := errs.Field(errs.NotFound, "code", "no such redeem code")
	var e *CreditEntry
	err = c.store.UpdateCredits(ctx, func(tx CreditTx) error {
		code, err := tx.CreditCodeByHash(hashCode(secret))
		if errs.Is(err, errs.NotFound) {
			return unknown
		}
		if err != nil {
			return err
		}
		if code.TenantID != p.TenantID {
			return unknown
		}
		if code.RedeemedAt != nil {
			return errs.Field(errs.Conflict, "code", "this code was already redeemed")
		}
		now := c.now().UTC().Truncate(time.Microsecond)
		if code.ExpiresAt != nil && !now.Before(*code.ExpiresAt) {
			return errs.Field(errs.Conflict, "code", "this code expired at %s", code.ExpiresAt.Format(time.RFC3339))
		}
		scope := code.Scope
		if scope == "" {
			scope = ScopeName(KindUser, p.UserID)
		}
		after := *code
		after.RedeemedBy, after.RedeemedScope, after.RedeemedAt = p.UserID, scope, &now
		if err := tx.RedeemCreditCode(&after); err != nil {
			return err
		}
		e = &CreditEntry{ID: id.NewAt("crd", now), Scope: scope, TenantID: code.TenantID, Kind: CreditRedeem, Tokens: code.Tokens,
			CostMicros: code.CostMicros, Note: code.Note, Actor: p.UserID, CodeID: code.ID, At: now}
		if err := tx.AddCredit(e); err != nil {
			return err
		}
		return c.audit(tx, p, code.TenantID, "credit.redeem", "credit", e.ID, e)
	})
	if err != nil {
		return nil, err
	}
	c.forgetEmpty(e.Scope)
	return e, nil
}

// Balances returns the balances the given scopes hold, without their
// history, for a caller already allowed to read the scopes' usage (GET
// /api/v1/usage shows them beside the budgets they extend).
func (c *Credits) Balances(ctx context.Context, scopes []string) ([]*CreditBalance, error) {
	var out []*CreditBalance
	err := c.store.ViewCredits(ctx, func(tx CreditTx) (err error) {
		out, err = tx.CreditBalancesOf(scopes)
		return err
	})
	return out, err
}
