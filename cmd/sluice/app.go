package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// App is a whole Sluice server: built from a Config, started on a listener,
// stopped by cancelling the context given to Serve. It touches no signals and
// no globals, so tests start it on 127.0.0.1:0.
type App struct {
	cfg     config.Config
	log     *slog.Logger
	stdout  io.Writer
	store   *sqlstore.Store
	tenancy *tenancy.Service
	ln      net.Listener
	srv     *http.Server
}

// NewApp opens the store, applies migrations and makes sure a first admin
// exists. stdout receives the one-time banner with a generated admin key.
func NewApp(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}
	store, err := sqlstore.OpenSQLite(ctx, cfg.SQLitePath())
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: log, stdout: stdout, store: store, tenancy: tenancy.NewService(store, log)}
	if err := a.bootstrap(ctx); err != nil {
		store.Close()
		return nil, err
	}
	return a, nil
}

// bootstrap creates the first platform admin and key if there is none.
func (a *App) bootstrap(ctx context.Context) error {
	res, err := a.tenancy.Bootstrap(ctx, string(a.cfg.AdminKey))
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if !res.Created {
		if a.cfg.AdminKey != "" {
			a.log.Info("bootstrap: an admin already exists; SLUICE_ADMIN_KEY is ignored")
		}
		return nil
	}
	if res.Secret == "" {
		a.log.Info("bootstrap: first platform admin created with the key from SLUICE_ADMIN_KEY", slog.String("user", res.UserID))
		return nil
	}
	path := filepath.Join(a.cfg.DataDir, "admin.key")
	if err := os.WriteFile(path, []byte(res.Secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fmt.Fprintf(a.stdout, "\nSluice created the first platform admin. Its API key is shown this once\n"+
		"and saved to %s (mode 0600):\n\n    %s\n\n", path, res.Secret)
	a.log.Info("bootstrap: first platform admin created; key written to file", slog.String("user", res.UserID), slog.String("file", path))
	return nil
}

// Listen binds the configured address.
func (a *App) Listen() error {
	ln, err := net.Listen("tcp", a.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.Addr, err)
	}
	a.ln = ln
	return nil
}

// Addr is the bound address (useful with port 0).
func (a *App) Addr() string { return a.ln.Addr().String() }

// Handler is the app's HTTP handler.
func (a *App) Handler() http.Handler {
	api := &httpapi.Server{
		Tenancy:      a.tenancy,
		Log:          a.log,
		MaxBodyBytes: a.cfg.MaxBodyBytes,
		Ready: func(ctx context.Context) map[string]error {
			return map[string]error{"store": a.store.Ping(ctx)}
		},
	}
	return api.Handler()
}

// Serve serves until ctx is cancelled, then drains in-flight requests for
// up to the shutdown timeout and closes the store.
func (a *App) Serve(ctx context.Context) error {
	if a.ln == nil {
		if err := a.Listen(); err != nil {
			return err
		}
	}
	a.srv = &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.log.Info("sluice serving", slog.String("addr", a.Addr()), slog.String("store", a.store.Dialect()), slog.String("version", httpapi.Version))
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(a.ln) }()
	select {
	case err := <-errc:
		a.store.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("sluice shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(a.cfg.ShutdownTimeout))
	defer cancel()
	err := a.srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return errors.Join(err, a.store.Close())
}
