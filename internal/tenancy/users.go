package tenancy

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
)

// ---- users ----

// UserInput creates a user. Role defaults to member.
type UserInput struct {
	TenantID    string `json:"tenant_id"`
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	Email       string `json:"email"`
	Role        Role   `json:"role"`
}

// UserPatch changes a user.
type UserPatch struct {
	Name        *string `json:"name"`
	DisplayName *string `json:"display_name"`
	Email       *string `json:"email"`
	Role        *Role   `json:"role"`
}

func (u *User) check() error {
	if err := ValidName("name", u.Name); err != nil {
		return err
	}
	if err := validDisplayName(u.DisplayName); err != nil {
		return err
	}
	if err := validEmail(u.Email); err != nil {
		return err
	}
	if !u.Role.valid() {
		return errs.Field(errs.Invalid, "role", "role %q is not one of platform_admin, tenant_admin, member", u.Role)
	}
	if u.Role == RolePlatformAdmin && u.TenantID != "" {
		return errs.Field(errs.Invalid, "role", "a platform admin belongs to no tenant; leave tenant_id empty")
	}
	if u.Role != RolePlatformAdmin && u.TenantID == "" {
		return errs.Field(errs.Invalid, "tenant_id", "tenant_id is required")
	}
	return nil
}

// mayGrant stops anyone but a platform admin from making platform admins.
func mayGrant(p Principal, r Role) error {
	if r == RolePlatformAdmin && !p.IsPlatformAdmin() {
		return errs.Field(errs.Forbidden, "role", "only a platform admin may grant platform_admin")
	}
	return nil
}

// CreateUser creates a user.
func (s *Service) CreateUser(ctx context.Context, in UserInput) (*User, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	u := &User{ID: id.NewAt("usr", now), Name: in.Name, DisplayName: in.DisplayName, Email: in.Email, Role: in.Role, CreatedAt: now, UpdatedAt: now}
	if u.Role == "" {
		u.Role = RoleMember
	}
	if u.Role != RolePlatformAdmin {
		u.TenantID = tenantFor(p, in.TenantID)
	} else {
		u.TenantID = in.TenantID
	}
	if err := mayGrant(p, u.Role); err != nil {
		return nil, err
	}
	if err := u.check(); err != nil {
		return nil, err
	}
	if err := mayAdmin(p, u.TenantID, "tenant"); err != nil {
		return nil, err
	}
	err = s.update(ctx, func(tx Tx) error {
		if u.TenantID != "" {
			if err := requireTenant(tx, u.TenantID); err != nil {
				return err
			}
		}
		if err := tx.InsertUser(u); err != nil {
			return err
		}
		return s.audit(tx, p, u.TenantID, "user.create", "user", u.ID, nil, u)
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}

// User returns one user. Members may see only themselves.
func (s *Service) User(ctx context.Context, userID string) (*User, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var u *User
	err = s.store.View(ctx, func(tx Tx) (err error) {
		if u, err = tx.User(userID); err != nil {
			return err
		}
		if err := mayRead(p, u.TenantID, "user", u.ID == p.UserID); err != nil {
			return errs.E(errs.NotFound, "user not found")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}

// Users lists users. Members see only themselves.
func (s *Service) Users(ctx context.Context, f Filter) ([]*User, error) {
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
	if !p.AdminOf(f.TenantID) && !p.IsPlatformAdmin() {
		f.UserID = p.UserID
	}
	var out []*User
	err = s.store.View(ctx, func(tx Tx) (err error) {
		out, err = tx.Users(f)
		return err
	})
	return out, err
}

// UpdateUser changes a user. Only admins change users; nobody changes their
// own role.
func (s *Service) UpdateUser(ctx context.Context, userID string, in UserPatch) (*User, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var u *User
	err = s.update(ctx, func(tx Tx) error {
		before, err := tx.User(userID)
		if err != nil {
			return err
		}
		if err := mayAdmin(p, before.TenantID, "user"); err != nil {
			return err
		}
		if before.Role == RolePlatformAdmin && !p.IsPlatformAdmin() {
			return errs.E(errs.Forbidden, "only a platform admin may change a platform admin")
		}
		after := *before
		setIf(&after.Name, in.Name)
		setIf(&after.DisplayName, in.DisplayName)
		setIf(&after.Email, in.Email)
		setIf(&after.Role, in.Role)
		if after.Role != before.Role {
			if userID == p.UserID {
				return errs.Field(errs.Forbidden, "role", "you may not change your own role")
			}
			if err := mayGrant(p, after.Role); err != nil {
				return err
			}
		}
		if err := after.check(); err != nil {
			return err
		}
		after.UpdatedAt = s.now().UTC()
		if err := tx.UpdateUser(&after); err != nil {
			return err
		}
		u = &after
		return s.audit(tx, p, u.TenantID, "user.update", "user", u.ID, before, u)
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}

// DeleteUser deletes a user who holds no active keys. Their memberships and
// revoked keys go with them.
func (s *Service) DeleteUser(ctx context.Context, userID string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx Tx) error {
		u, err := tx.User(userID)
		if err != nil {
			return err
		}
		if err := mayAdmin(p, u.TenantID, "user"); err != nil {
			return err
		}
		if u.Role == RolePlatformAdmin && !p.IsPlatformAdmin() {
			return errs.E(errs.Forbidden, "only a platform admin may delete a platform admin")
		}
		if userID == p.UserID {
			return errs.E(errs.Forbidden, "you may not delete yourself")
		}
		if n, err := tx.CountActiveKeys(Filter{UserID: userID}); err != nil {
			return err
		} else if n > 0 {
			return errs.Field(errs.Conflict, "keys", "user %s still has %d active keys; revoke them first", u.Name, n)
		}
		if err := tx.DeleteMemberships(Filter{UserID: userID}); err != nil {
			return err
		}
		if err := tx.DeleteRevokedKeys(userID); err != nil {
			return err
		}
		if err := tx.DeleteUser(userID); err != nil {
			return err
		}
		return s.audit(tx, p, u.TenantID, "user.delete", "user", userID, u, nil)
	})
}

// ---- memberships ----

// MembershipInput adds a user to a project.
type MembershipInput struct {
	UserID    string `json:"user_id"`
	ProjectID string `json:"project_id"`
}

// loadPair fetches a user and a project of the same tenant, both visible to
// an admin p.
func loadPair(tx Tx, p Principal, userID, projectID string) (*User, *Project, error) {
	if userID == "" {
		return nil, nil, errs.Field(errs.Invalid, "user_id", "user_id is required")
	}
	if projectID == "" {
		return nil, nil, errs.Field(errs.Invalid, "project_id", "project_id is required")
	}
	pr, err := tx.Project(projectID)
	if errs.Is(err, errs.NotFound) {
		return nil, nil, errs.Field(errs.NotFound, "project_id", "project %s not found", projectID)
	} else if err != nil {
		return nil, nil, err
	}
	if err := mayAdmin(p, pr.TenantID, "project"); err != nil {
		if errs.Is(err, errs.NotFound) {
			return nil, nil, errs.Field(errs.NotFound, "project_id", "project %s not found", projectID)
		}
		return nil, nil, err
	}
	u, err := tx.User(userID)
	if errs.Is(err, errs.NotFound) || (err == nil && u.TenantID != pr.TenantID) {
		return nil, nil, errs.Field(errs.NotFound, "user_id", "user %s not found in the project's tenant", userID)
	}
	return u, pr, err
}

// AddMember makes a user a member of a project.
func (s *Service) AddMember(ctx context.Context, in MembershipInput) (*Membership, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var m *Membership
	err = s.update(ctx, func(tx Tx) error {
		_, pr, err := loadPair(tx, p, in.UserID, in.ProjectID)
		if err != nil {
			return err
		}
		m = &Membership{UserID: in.UserID, ProjectID: in.ProjectID, TenantID: pr.TenantID, CreatedAt: s.now().UTC()}
		if err := tx.InsertMembership(m); err != nil {
			return err
		}
		return s.audit(tx, p, pr.TenantID, "membership.create", "membership", m.UserID+"@"+m.ProjectID, nil, m)
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Memberships lists memberships; members see their own.
func (s *Service) Memberships(ctx context.Context, f Filter) ([]*Membership, error) {
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
	if !p.AdminOf(f.TenantID) && !p.IsPlatformAdmin() {
		f.UserID = p.UserID
	}
	var out []*Membership
	err = s.store.View(ctx, func(tx Tx) (err error) {
		out, err = tx.Memberships(f)
		return err
	})
	return out, err
}

// Membership returns one membership: to admins of its tenant and to its user.
func (s *Service) Membership(ctx context.Context, userID, projectID string) (*Membership, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var m *Membership
	err = s.store.View(ctx, func(tx Tx) (err error) {
		if m, err = tx.Membership(userID, projectID); err != nil {
			return err
		}
		if mayRead(p, m.TenantID, "membership", m.UserID == p.UserID) != nil {
			return errs.E(errs.NotFound, "membership not found")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// CanWorkIn checks that user may work in project: a member of it, or an
// admin of its tenant. The caller must be able to see the user.
func (s *Service) CanWorkIn(ctx context.Context, userID, projectID string) error {
	return s.store.View(ctx, func(tx Tx) error {
		u, err := tx.User(userID)
		if err != nil {
			return errs.Field(errs.NotFound, "user_id", "user %s not found", userID)
		}
		pr, err := tx.Project(projectID)
		if errs.Is(err, errs.NotFound) || (err == nil && pr.TenantID != u.TenantID) {
			return errs.Field(errs.NotFound, "project_id", "project %s not found", projectID)
		} else if err != nil {
			return err
		}
		if u.Role == RoleTenantAdmin {
			return nil
		}
		if _, err := tx.Membership(userID, projectID); errs.Is(err, errs.NotFound) {
			return errs.Field(errs.Forbidden, "project_id", "user %s is not a member of project %s", u.Name, pr.Name)
		} else if err != nil {
			return err
		}
		return nil
	})
}

// RemoveMember ends a membership. Keys whose default project it was stay, but
// no longer authenticate into it.
func (s *Service) RemoveMember(ctx context.Context, userID, projectID string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx Tx) error {
		if _, _, err := loadPair(tx, p, userID, projectID); err != nil {
			return err
		}
		m, err := tx.Membership(userID, projectID)
		if err != nil {
			return err
		}
		if err := tx.DeleteMembership(userID, projectID); err != nil {
			return err
		}
		return s.audit(tx, p, m.TenantID, "membership.delete", "membership", userID+"@"+projectID, m, nil)
	})
}

// ---- keys ----

// KeyInput creates an API key. UserID empty means the caller. ProjectID is
// the project the key works in unless a request names another. The key
// expires at ExpiresAt, or ExpiresIn ("720h", "30d") from its creation;
// without either it lasts until revoked.
type KeyInput struct {
	UserID    string     `json:"user_id"`
	ProjectID string     `json:"project_id"`
	Name      string     `json:"name"`
	ExpiresAt *time.Time `json:"expires_at"`
	ExpiresIn string     `json:"expires_in"`
}

// KeyPatch changes a key's name, default project or expiry (ExpiresAt, or
// ExpiresIn from now).
type KeyPatch struct {
	Name      *string    `json:"name"`
	ProjectID *string    `json:"project_id"`
	ExpiresAt *time.Time `json:"expires_at"`
	ExpiresIn *string    `json:"expires_in"`
}

// maxKeyLife bounds expires_in, so that a typo does not overflow a time.
const maxKeyLife = 100 * 365 * 24 * time.Hour

// keyExpiry resolves expires_at or expires_in (a duration such as "720h",
// or whole days such as "30d") at now; nil when neither is set.
func keyExpiry(now time.Time, at *time.Time, in string) (*time.Time, error) {
	switch {
	case at != nil && in != "":
		return nil, errs.Field(errs.Invalid, "expires_in", "give expires_at or expires_in, not both")
	case in != "":
		d, err := time.ParseDuration(in)
		if days, ok := strings.CutSuffix(in, "d"); ok && err != nil {
			n, perr := strconv.ParseInt(days, 10, 64)
			if perr == nil && n > 0 && n <= int64(maxKeyLife/(24*time.Hour)) {
				d, err = time.Duration(n)*24*time.Hour, nil
			}
		}
		if err != nil || d <= 0 || d > maxKeyLife {
			return nil, errs.Field(errs.Invalid, "expires_in", "expires_in %q is not a positive duration such as 720h or 30d", in)
		}
		e := now.Add(d).UTC().Truncate(time.Microsecond)
		return &e, nil
	case at != nil:
		if !at.After(now) {
			return nil, errs.Field(errs.Invalid, "expires_at", "expires_at must be in the future")
		}
		e := at.UTC()
		return &e, nil
	}
	return nil, nil
}

// keyOwner loads the key's user and checks p may manage their keys.
func keyOwner(tx Tx, p Principal, userID string) (*User, error) {
	u, err := tx.User(userID)
	if errs.Is(err, errs.NotFound) {
		return nil, errs.Field(errs.NotFound, "user_id", "user %s not found", userID)
	} else if err != nil {
		return nil, err
	}
	if u.ID == p.UserID {
		return u, nil
	}
	if err := mayAdmin(p, u.TenantID, "user"); err != nil {
		if errs.Is(err, errs.NotFound) {
			return nil, errs.Field(errs.NotFound, "user_id", "user %s not found", userID)
		}
		return nil, err
	}
	if u.Role == RolePlatformAdmin && !p.IsPlatformAdmin() {
		return nil, errs.Field(errs.Forbidden, "user_id", "only a platform admin may manage a platform admin's keys")
	}
	return u, nil
}

// checkKeyProject checks that a key's default project is one its user may
// work in: any project of the tenant for a tenant admin, a project they are
// a member of otherwise.
func checkKeyProject(tx Tx, u *User, projectID string) error {
	if projectID == "" {
		return nil
	}
	pr, err := tx.Project(projectID)
	if errs.Is(err, errs.NotFound) || (err == nil && pr.TenantID != u.TenantID) {
		return errs.Field(errs.Invalid, "project_id", "project %s not found in the user's tenant", projectID)
	} else if err != nil {
		return err
	}
	if u.Role == RoleMember {
		if _, err := tx.Membership(u.ID, projectID); errs.Is(err, errs.NotFound) {
			return errs.Field(errs.Invalid, "project_id", "user %s is not a member of project %s", u.Name, pr.Name)
		} else if err != nil {
			return err
		}
	}
	return nil
}

func checkKeyName(name string) error {
	if name == "" {
		return nil
	}
	return ValidName("name", name)
}

// CreateKey creates an API key and returns it with its secret, which is
// shown this once and never stored.
func (s *Service) CreateKey(ctx context.Context, in KeyInput) (*Key, string, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, "", err
	}
	var k *Key
	var secret string
	err = s.update(ctx, func(tx Tx) error {
		if k, secret, err = InsertNewKey(tx, p, in, s.now()); err != nil {
			return err
		}
		return s.audit(tx, p, k.TenantID, "key.create", "key", k.ID, nil, k)
	})
	if err != nil {
		return nil, "", err
	}
	return k, secret, nil
}

// InsertNewKey creates a key for p as CreateKey does, inside tx, and
// returns it with its secret; the caller writes the audit entry. It lets
// a caller whose transaction also sees the tree (the policy service)
// create a key and set its limits in one commit.
func InsertNewKey(tx Tx, p Principal, in KeyInput, now time.Time) (*Key, string, error) {
	if in.UserID == "" {
		in.UserID = p.UserID
	}
	if err := checkKeyName(in.Name); err != nil {
		return nil, "", err
	}
	now = now.UTC()
	expires, err := keyExpiry(now, in.ExpiresAt, in.ExpiresIn)
	if err != nil {
		return nil, "", err
	}
	u, err := keyOwner(tx, p, in.UserID)
	if err != nil {
		return nil, "", err
	}
	if err := checkKeyProject(tx, u, in.ProjectID); err != nil {
		return nil, "", err
	}
	secret := NewSecret()
	k := newKey(now, u, in.ProjectID, in.Name, expires, secret)
	if err := tx.InsertKey(k); err != nil {
		return nil, "", err
	}
	return k, secret, nil
}

func newKey(now time.Time, u *User, projectID, name string, expires *time.Time, secret string) *Key {
	k := &Key{
		ID: id.NewAt("key", now), Prefix: VisiblePrefix(secret), Name: name, UserID: u.ID,
		TenantID: u.TenantID, ProjectID: projectID, CreatedAt: now, Hash: HashSecret(secret),
	}
	if expires != nil {
		e := expires.UTC()
		k.ExpiresAt = &e
	}
	return k
}

// Key returns one key (never its secret).
func (s *Service) Key(ctx context.Context, keyID string) (*Key, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var k *Key
	err = s.store.View(ctx, func(tx Tx) (err error) {
		if k, err = tx.Key(keyID); err != nil {
			return err
		}
		if _, err := keyOwner(tx, p, k.UserID); err != nil {
			return errs.E(errs.NotFound, "key not found")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// Keys lists keys; members see their own.
func (s *Service) Keys(ctx context.Context, f Filter) ([]*Key, error) {
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
	if !p.AdminOf(f.TenantID) && !p.IsPlatformAdmin() {
		f.UserID = p.UserID
	}
	var out []*Key
	err = s.store.View(ctx, func(tx Tx) (err error) {
		out, err = tx.Keys(f)
		return err
	})
	return out, err
}

// UpdateKey renames a key, changes its default project or its expiry.
func (s *Service) UpdateKey(ctx context.Context, keyID string, in KeyPatch) (*Key, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var k *Key
	err = s.update(ctx, func(tx Tx) error {
		before, err := tx.Key(keyID)
		if err != nil {
			return err
		}
		u, err := keyOwner(tx, p, before.UserID)
		if err != nil {
			return errs.E(errs.NotFound, "key not found")
		}
		if before.RevokedAt != nil {
			return errs.E(errs.Conflict, "key %s is revoked", keyID)
		}
		after := *before
		setIf(&after.Name, in.Name)
		setIf(&after.ProjectID, in.ProjectID)
		if in.ExpiresAt != nil || in.ExpiresIn != nil {
			var within string
			if in.ExpiresIn != nil {
				within = *in.ExpiresIn
				if within == "" {
					return errs.Field(errs.Invalid, "expires_in", "expires_in must be a duration such as 720h or 30d")
				}
			}
			e, err := keyExpiry(s.now(), in.ExpiresAt, within)
			if err != nil {
				return err
			}
			after.ExpiresAt = e
		}
		if err := checkKeyName(after.Name); err != nil {
			return err
		}
		if after.ProjectID != before.ProjectID {
			if err := checkKeyProject(tx, u, after.ProjectID); err != nil {
				return err
			}
		}
		if err := tx.UpdateKey(&after); err != nil {
			return err
		}
		k = &after
		return s.audit(tx, p, k.TenantID, "key.update", "key", k.ID, before, k)
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// RevokeKey revokes a key at once. The record stays for the audit trail.
// Revoking a revoked key changes nothing.
func (s *Service) RevokeKey(ctx context.Context, keyID string) (*Key, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var k *Key
	err = s.update(ctx, func(tx Tx) error {
		before, err := tx.Key(keyID)
		if err != nil {
			return err
		}
		if _, err := keyOwner(tx, p, before.UserID); err != nil {
			return errs.E(errs.NotFound, "key not found")
		}
		if before.RevokedAt != nil {
			k = before
			return nil
		}
		after := *before
		now := s.now().UTC()
		after.RevokedAt = &now
		if err := tx.UpdateKey(&after); err != nil {
			return err
		}
		k = &after
		return s.audit(tx, p, k.TenantID, "key.revoke", "key", k.ID, before, k)
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}
