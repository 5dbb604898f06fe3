// Package console is Sluice's web console, served by the binary under
// /console/: HTML pages rendered on the server from embedded templates,
// hand-written CSS and a small script that only enhances them (forms work
// without it). Members see their quota as progress bars, ask for more and
// manage their keys; admins steer the tenancy tree, plans, limits, grants
// and quota requests, read the audit log and usage charts.
//
// It calls the same services the REST API does (tenancy, policy, metering,
// runs) with the signed-in principal in the context, so every rule of who
// may see and change what is the services' own. Sign-in takes an API key
// and makes a server-side session (package session); every change is a
// POST checked for a same-origin Origin or Referer and the session's CSRF
// token.
package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/whatif"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// Prefix is where the console is mounted.
const Prefix = "/console/"

// CookieName is the session cookie's name.
const CookieName = "sluice_console"

// preCookie holds the sign-in form's CSRF token (no session exists yet).
const preCookie = "sluice_console_signin"

// maxFormBytes bounds a form's body: the largest form is a plan's limits.
const maxFormBytes = 64 << 10

// Ledger reads the usage ledger's sums (sqlstore.Store): a scope's history
// per day and model, and the roll-ups of every scope of one kind.
type Ledger interface {
	UsageHistory(ctx context.Context, q usage.HistoryQuery) ([]usage.HistoryRow, error)
	KindRollups(ctx context.Context, kind, tenantID string, periods []string) ([]usage.Rollup, error)
}

// Names resolves a scope to names people read (sqlstore.Store): its
// tenant's name and its own ("alice@web" for a membership).
type Names interface {
	ScopeNames(ctx context.Context, tenantID, scope string) (tenantName, scopeName string, err error)
}

// Console serves the web console. Tenancy, Policy, Meter and Sessions are
// required; the others turn parts on.
type Console struct {
	Tenancy  *tenancy.Service
	Policy   *policy.Service
	Meter    *metering.Meter
	Sessions *session.Manager
	Requests *policy.Requests
	Runs     *run.Service
	Ledger   Ledger
	Names    Names
	// WhatIf bounds the policy what-if page's replays, as the API's.
	WhatIf whatif.Options
	// Mode reports the quota engine's mode: normal, degraded or read_only.
	Mode func() string
	// SecureCookie "always" marks the session cookie Secure whatever the
	// request; "auto" (or empty) when the request came over TLS or through
	// a proxy that says X-Forwarded-Proto: https.
	SecureCookie string
	Log          *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time

	pages map[string]*template.Template
	mux   *http.ServeMux
	live  *liveRuns // the flow runs started here (flows_run.go)
}

// Handler returns the console's handler, for Prefix and everything under
// it. It panics if a template does not parse: they are embedded, so that
// is a build mistake, caught by every test.
func (c *Console) Handler() http.Handler {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.pages = mustParse()
	c.mux = http.NewServeMux()
	static, _ := fs.Sub(staticFiles, "static")
	c.mux.Handle("GET /console/static/", http.StripPrefix("/console/static/", staticHandler(static)))
	c.mux.HandleFunc("GET /console/{$}", c.signedIn(c.home))
	c.mux.HandleFunc("GET /console/signin", c.signinPage)
	c.mux.HandleFunc("POST /console/signin", c.signin)
	c.mux.HandleFunc("POST /console/signout", c.signedIn(c.signout))
	c.memberRoutes()
	c.adminRoutes()
	c.flowRoutes()
	c.whatIfRoutes()
	c.mux.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, nil, errs.E(errs.NotFound, "there is no console page at %s", r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Nothing from elsewhere: no inline script, no frames, forms post
		// only here.
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/console/static/") {
			h.Set("Cache-Control", "no-store")
		}
		c.mux.ServeHTTP(w, r)
	})
}

func staticHandler(files fs.FS) http.Handler {
	fsrv := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") || r.URL.Path == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=300")
		fsrv.ServeHTTP(w, r)
	})
}

// req is a signed-in request: its session and principal (also in the
// request's context, where the services read it).
type req struct {
	*http.Request
	s *session.Session
	p tenancy.Principal
}

func (r *req) ctx() context.Context { return r.Context() }

// isAdmin reports whether the signed-in user administers a tenant (or the
// platform).
func (r *req) isAdmin() bool {
	return r.p.Role == tenancy.RoleTenantAdmin || r.p.Role == tenancy.RolePlatformAdmin
}

// signedIn resolves the session cookie. Without a live session a GET goes
// to the sign-in page and anything else is refused. Every non-GET must
// come from this site (Origin or Referer) and carry the session's CSRF
// token in its form.
func (c *Console) signedIn(next func(http.ResponseWriter, *req)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var token string
		if ck, err := r.Cookie(CookieName); err == nil {
			token = ck.Value
		}
		s, p, err := c.Sessions.Resolve(r.Context(), token)
		if err != nil {
			if !errs.Is(err, errs.Unauthorized) {
				c.fail(w, r, nil, err)
				return
			}
			c.clearCookie(w, r)
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/console/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			c.refuse(w, r, nil, "Your session has ended (it expired, you signed out, or its API key was revoked). Sign in again.")
			return
		}
		r = r.WithContext(tenancy.WithPrincipal(r.Context(), p))
		rq := &req{Request: r, s: s, p: p}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if why := sameOrigin(r); why != "" {
				c.refuse(w, r, rq, why)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
			if err := r.ParseForm(); err != nil {
				c.fail(w, r, rq, errs.E(errs.TooLarge, "the form is too large or malformed"))
				return
			}
			if !s.CheckCSRF(r.PostForm.Get("csrf")) {
				c.refuse(w, r, rq, "The form did not carry this session's security token (it may be from an older page or another site). Reload the page and try again.")
				return
			}
		}
		next(w, rq)
	}
}

// adminOnly lets tenant and platform admins through; members get 403.
func adminOnly(c *Console, next func(http.ResponseWriter, *req)) http.HandlerFunc {
	return c.signedIn(func(w http.ResponseWriter, r *req) {
		if !r.isAdmin() {
			c.fail(w, r.Request, r, errs.E(errs.Forbidden, "this page is for tenant and platform admins"))
			return
		}
		next(w, r)
	})
}

// sameOrigin checks that a state-changing request came from a page of this
// site: its Origin, or when a browser sends none its Referer, must name the
// host it was sent to. It returns why not, or "".
func sameOrigin(r *http.Request) string {
	src := r.Header.Get("Origin")
	what := "Origin"
	if src == "" || src == "null" {
		src, what = r.Header.Get("Referer"), "Referer"
	}
	if src == "" {
		return "The request did not say which page it came from (no Origin or Referer header), so it was refused: changes are accepted only from this site's own pages."
	}
	u, err := url.Parse(src)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
		return "The request came from another site (" + what + " " + clip(src, 80) + "), so it was refused: changes are accepted only from this site's own pages."
	}
	return ""
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// secure reports whether cookies should be marked Secure for r.
func (c *Console) secure(r *http.Request) bool {
	return c.SecureCookie == "always" || r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/console/", MaxAge: maxAge,
		HttpOnly: true, Secure: c.secure(r), SameSite: http.SameSiteStrictMode})
}

func (c *Console) clearCookie(w http.ResponseWriter, r *http.Request) {
	c.setCookie(w, r, CookieName, "", -1)
}

// ---- rendering ----

// page is what every template gets.
type page struct {
	Title string
	Nav   string // the active nav entry
	User  string
	Role  tenancy.Role
	Admin bool
	CSRF  string
	// Banner is the engine's degraded or read-only state, when not normal.
	Banner string
	// Notice is a message after a change (from a fixed list, never echoed
	// from the request).
	Notice string
	Data   any
}

// notices are the messages a redirect after a change may show (?done=).
var notices = map[string]string{
	"request":  "Your request was sent to your admins.",
	"cancel":   "The request was cancelled.",
	"expiry":   "The key's expiry was changed.",
	"revoke":   "The key was revoked.",
	"limits":   "The limits were saved.",
	"cleared":  "The scope's own limits were removed.",
	"plan":     "The plan was saved.",
	"grant":    "The grant was made.",
	"ungrant":  "The grant was revoked.",
	"approved": "The request was approved: the grant is in force.",
	"denied":   "The request was denied.",
}

func (c *Console) banner() string {
	if c.Mode == nil {
		return ""
	}
	switch c.Mode() {
	case "degraded":
		return "The quota engine is degraded: its shared store cannot be reached, so limits are enforced on each instance's share of what remained. Usage shown here may lag."
	case "read_only":
		msg := "The platform is read-only: new runs and calls are refused until an operator lifts it."
		if m := c.Policy.Manager().Current().Platform().Message; m != "" {
			msg += " " + m
		}
		return msg
	}
	return ""
}

// render writes the named page with status.
func (c *Console) render(w http.ResponseWriter, r *req, status int, name, title, nav string, data any) {
	t, ok := c.pages[name]
	if !ok {
		panic("console: no template " + name)
	}
	pg := page{Title: title, Nav: nav, Banner: c.banner(), Data: data}
	if r != nil {
		pg.User, pg.Role, pg.Admin, pg.CSRF = r.p.UserName, r.p.Role, r.isAdmin(), r.s.CSRF
		if n := r.URL.Query().Get("done"); n != "" {
			pg.Notice = notices[n]
		}
	}
	// Rendered whole before anything is sent: a template that fails half
	// way answers 500, not a truncated page with a 200.
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", pg); err != nil {
		c.Log.Error("console: render failed", slog.String("page", name), slog.String("error", err.Error()))
		http.Error(w, "the page could not be drawn; the server's log says why", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

// problem is the data of the error page.
type problem struct {
	Status    int
	Heading   string
	Message   string
	RequestID string
}

// fail shows err as a page with its status, as the API maps it. Internal
// errors are logged and shown as "internal error" with the request id.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, rq *req, err error) {
	var e *errs.Error
	if !errors.As(err, &e) {
		e = errs.Wrap(err, "internal error")
	}
	status := httpapi.Status(e.Code)
	msg := e.Message
	rid := w.Header().Get("X-Request-Id")
	if status >= 500 {
		c.Log.LogAttrs(r.Context(), slog.LevelError, "console request failed", slog.String("request_id", rid), slog.String("error", err.Error()))
		if e.Code == errs.Internal {
			msg = "internal error"
		}
	}
	heading := map[int]string{400: "That did not work", 403: "Not allowed", 404: "Not found", 409: "Conflict", 413: "Too large"}[status]
	if heading == "" {
		heading = http.StatusText(status)
	}
	c.render(w, rq, status, "error", heading, "", problem{Status: status, Heading: heading, Message: msg, RequestID: rid})
}

// refuse answers 403 with a page that says why (a CSRF check failed).
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, rq *req, why string) {
	c.Log.LogAttrs(r.Context(), slog.LevelWarn, "console: request refused", slog.String("path", r.URL.Path), slog.String("reason", why))
	c.render(w, rq, http.StatusForbidden, "error", "Refused", "",
		problem{Status: http.StatusForbidden, Heading: "Refused", Message: why, RequestID: w.Header().Get("X-Request-Id")})
}

// redirect answers a successful POST with a redirect to a page (303, so a
// reload does not post again) that shows notice.
func redirect(w http.ResponseWriter, r *req, to, notice string) {
	if notice != "" {
		sep := "?"
		if strings.Contains(to, "?") {
			sep = "&"
		}
		to += sep + "done=" + notice
	}
	http.Redirect(w, r.Request, to, http.StatusSeeOther)
}

// fieldErrors maps a form field to the message shown beside it.
type fieldErrors map[string]string

// formError splits err into a message per field (errs' Field, its last
// part after the form's prefix) when it names one, or a message for the
// whole form.
func formError(err error) (fieldErrors, string, bool) {
	var e *errs.Error
	if !errors.As(err, &e) || (e.Code != errs.Invalid && e.Code != errs.Conflict && e.Code != errs.NotFound && e.Code != errs.Forbidden) {
		return nil, "", false
	}
	if e.Field != "" {
		return fieldErrors{e.Field: e.Message}, "", true
	}
	return nil, e.Message, true
}
