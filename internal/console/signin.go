package console

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/errs"
)

type signinData struct {
	Next  string
	Token string
	Error string
}

// safeNext keeps a post-sign-in redirect on the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix
	}
	return next
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	token := newPreToken()
	c.setCookie(w, r, preCookie, token, 900)
	c.render(w, nil, http.StatusOK, "signin", "Sign in", "", signinData{Next: safeNext(r.URL.Query().Get("next")), Token: token})
}

// signin checks the form (same origin, and the token the sign-in page set
// in a cookie and in the form: a page elsewhere can set neither), resolves
// the API key and starts a session.
func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	if why := sameOrigin(r); why != "" {
		c.refuse(w, r, nil, why)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, nil, errs.E(errs.TooLarge, "the form is too large or malformed"))
		return
	}
	ck, err := r.Cookie(preCookie)
	if err != nil || !equalTokens(ck.Value, r.PostForm.Get("csrf")) {
		c.refuse(w, r, nil, "The sign-in form's security token was missing or did not match (the page may be old, or from another site). Open the sign-in page again.")
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	s, token, _, err := c.Sessions.SignIn(r.Context(), strings.TrimSpace(r.PostForm.Get("key")))
	if err != nil {
		if !errs.Is(err, errs.Unauthorized) {
			c.fail(w, r, nil, err)
			return
		}
		// A fresh token for the form shown again.
		pre := newPreToken()
		c.setCookie(w, r, preCookie, pre, 900)
		var e *errs.Error
		msg := "That API key was not accepted."
		if errors.As(err, &e) {
			msg = e.Message
		}
		c.render(w, nil, http.StatusUnauthorized, "signin", "Sign in", "", signinData{Next: next, Token: pre, Error: msg})
		return
	}
	c.setCookie(w, r, preCookie, "", -1)
	c.setCookie(w, r, CookieName, token, int(s.ExpiresAt.Sub(s.CreatedAt).Seconds()))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signout(w http.ResponseWriter, r *req) {
	if err := c.Sessions.SignOut(r.ctx(), r.s); err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	c.clearCookie(w, r.Request)
	http.Redirect(w, r.Request, "/console/signin", http.StatusSeeOther)
}

func newPreToken() string { return session.NewToken() }

func equalTokens(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
