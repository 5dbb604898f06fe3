package tenancy

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
)

// MaxSecretLen bounds what is hashed from a request header.
const MaxSecretLen = 256

// authTTL bounds how long a resolved key is trusted without the store. Any
// change made through this instance forgets every resolved key at once, and
// changes made through others do within their poll interval (ForgetKeys,
// called on every policy reload); the TTL bounds the rest.
const authTTL = 5 * time.Second

// authCache remembers resolved keys, so that the hot paths (metering, runs)
// do not read the store on every request.
type authCache struct {
	mu      sync.RWMutex
	entries map[[32]byte]authEntry
	gen     uint64 // bumped by ForgetKeys: a read that straddles one is not cached
}

type authEntry struct {
	p       Principal
	prefix  string
	expires *time.Time
	until   time.Time
}

// ForgetKeys drops every resolved key: the next request of each reads the
// store again. Called after every change.
func (s *Service) ForgetKeys() {
	s.auth.mu.Lock()
	s.auth.entries = nil
	s.auth.gen++
	s.auth.mu.Unlock()
}

// Authenticate resolves an API key to its principal. Revoked and expired
// keys are refused; the error never echoes the key.
func (s *Service) Authenticate(ctx context.Context, secret string) (Principal, error) {
	if secret == "" {
		return Principal{}, errs.E(errs.Unauthorized, "an API key is required (Authorization: Bearer … or x-api-key)")
	}
	if len(secret) > MaxSecretLen {
		return Principal{}, errs.E(errs.Unauthorized, "invalid API key")
	}
	hash := sha256.Sum256([]byte(secret))
	now := s.clock()
	s.auth.mu.RLock()
	e, ok := s.auth.entries[hash]
	gen := s.auth.gen
	s.auth.mu.RUnlock()
	if ok && now.Before(e.until) {
		if e.expires != nil && !now.Before(*e.expires) {
			return Principal{}, errs.E(errs.Unauthorized, "API key %s… has expired", e.prefix)
		}
		return e.p, nil
	}
	var p Principal
	var key *Key
	err := s.store.View(ctx, func(tx Tx) error {
		k, err := tx.KeyByHash(hash[:])
		if errs.Is(err, errs.NotFound) {
			return errs.E(errs.Unauthorized, "invalid API key")
		} else if err != nil {
			return err
		}
		key = k
		p, err = s.principalOf(tx, k)
		return err
	})
	if err != nil {
		return p, err
	}
	s.auth.mu.Lock()
	if s.auth.gen == gen { // nothing changed while we read: safe to remember
		if s.auth.entries == nil || len(s.auth.entries) > 100000 {
			s.auth.entries = map[[32]byte]authEntry{}
		}
		s.auth.entries[hash] = authEntry{p: p, prefix: key.Prefix, expires: key.ExpiresAt, until: now.Add(authTTL)}
	}
	s.auth.mu.Unlock()
	return p, nil
}

// principalOf is the principal key k authenticates, if it is active.
func (s *Service) principalOf(tx Tx, k *Key) (Principal, error) {
	if !k.Active(s.now()) {
		if k.RevokedAt != nil {
			return Principal{}, errs.E(errs.Unauthorized, "API key %s… has been revoked", k.Prefix)
		}
		return Principal{}, errs.E(errs.Unauthorized, "API key %s… has expired", k.Prefix)
	}
	u, err := tx.User(k.UserID)
	if err != nil {
		return Principal{}, err
	}
	p := Principal{KeyID: k.ID, KeyPrefix: k.Prefix, UserID: u.ID, UserName: u.Name, TenantID: u.TenantID, ProjectID: k.ProjectID, Role: u.Role}
	if p.ProjectID != "" && u.Role == RoleMember {
		if _, err := tx.Membership(u.ID, p.ProjectID); errs.Is(err, errs.NotFound) {
			p.ProjectID = "" // membership ended since the key was made
		} else if err != nil {
			return Principal{}, err
		}
	}
	return p, nil
}

// KeyPrincipal resolves the key with id keyID, as Authenticate resolves a
// secret: a session made by signing in with a key (the web console) lives
// only as long as its key stays active. It reads the store every time.
func (s *Service) KeyPrincipal(ctx context.Context, keyID string) (Principal, error) {
	var p Principal
	err := s.store.View(ctx, func(tx Tx) error {
		k, err := tx.Key(keyID)
		if errs.Is(err, errs.NotFound) {
			return errs.E(errs.Unauthorized, "the API key was deleted")
		} else if err != nil {
			return err
		}
		p, err = s.principalOf(tx, k)
		return err
	})
	return p, err
}

// BootstrapResult says what Bootstrap did.
type BootstrapResult struct {
	Created bool   // a first admin was made
	Secret  string // the generated key, when one was generated
	UserID  string
}

// Bootstrap makes the first platform admin and key if there is none. With a
// non-empty secret (SLUICE_ADMIN_KEY) that becomes the key; otherwise a key
// is generated and returned once for the caller to show and save.
func (s *Service) Bootstrap(ctx context.Context, secret string) (BootstrapResult, error) {
	res, err := s.bootstrap(ctx, secret)
	if errs.Is(err, errs.Conflict) {
		// Another instance made the first admin between our check and our
		// insert (several instances starting on one PostgreSQL database):
		// look again, and find theirs.
		return s.bootstrap(ctx, secret)
	}
	return res, err
}

func (s *Service) bootstrap(ctx context.Context, secret string) (BootstrapResult, error) {
	generated := secret == ""
	if generated {
		secret = NewSecret()
	} else if err := checkOperatorSecret("SLUICE_ADMIN_KEY", secret); err != nil {
		return BootstrapResult{}, err
	}
	var res BootstrapResult
	err := s.update(ctx, func(tx Tx) error {
		admins, err := tx.Users(Filter{Root: true, Page: Page{Limit: 1}})
		if err != nil {
			return err
		}
		if len(admins) > 0 {
			res.UserID = admins[0].ID
			return nil
		}
		now := s.now().UTC()
		u := &User{ID: id.NewAt("usr", now), Name: "admin", Role: RolePlatformAdmin, CreatedAt: now, UpdatedAt: now}
		if err := tx.InsertUser(u); err != nil {
			return err
		}
		k := newKey(now, u, "", "bootstrap", nil, secret)
		if err := tx.InsertKey(k); err != nil {
			return err
		}
		res = BootstrapResult{Created: true, UserID: u.ID}
		if generated {
			res.Secret = secret
		}
		if err := s.audit(tx, SystemPrincipal, "", "user.create", "user", u.ID, nil, u); err != nil {
			return err
		}
		return s.audit(tx, SystemPrincipal, "", "key.create", "key", k.ID, nil, k)
	})
	return res, err
}

// Audit lists audit entries, newest first: all for platform admins, their
// tenant's for tenant admins.
func (s *Service) Audit(ctx context.Context, f Filter) ([]*AuditEntry, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if f, err = pageOf(f); err != nil {
		return nil, err
	}
	if f, err = scopeToTenant(p, f); err != nil {
		return nil, err
	}
	if err := mayAdmin(p, f.TenantID, "audit log"); err != nil && !p.IsPlatformAdmin() {
		return nil, err
	}
	var out []*AuditEntry
	err = s.store.View(ctx, func(tx Tx) (err error) {
		out, err = tx.Audit(f)
		return err
	})
	return out, err
}
