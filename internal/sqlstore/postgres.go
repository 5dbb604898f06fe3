package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sluicehq/sluice/internal/config"
)

var postgres = dialect{
	name:   "postgres",
	dollar: true,
	isUnique: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "23505" // unique_violation
	},
}

// migrateLockKey names the advisory lock that serializes migrations across
// instances sharing a database: "sluice" in ASCII.
const migrateLockKey int64 = 0x736c75696365

// Open opens the store databaseURL names: "sqlite:PATH", or "" (or
// "sqlite:") for sluice.db in dataDir, or a postgres:// or postgresql://
// URL.
func Open(ctx context.Context, databaseURL, dataDir string) (*Store, error) {
	if isPostgresURL(databaseURL) {
		return OpenPostgres(ctx, databaseURL)
	}
	path, ok := strings.CutPrefix(databaseURL, "sqlite:")
	if !ok && databaseURL != "" {
		return nil, fmt.Errorf("database URL %s: want sqlite:PATH, postgres://… or postgresql://…", Redact(databaseURL))
	}
	if path == "" {
		path = filepath.Join(dataDir, "sluice.db")
	}
	return OpenSQLite(ctx, path)
}

func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// OpenPostgres connects to the PostgreSQL database at databaseURL
// (postgres://user:password@host:port/dbname?sslmode=…) and brings its schema
// up to date. Several instances may open the same database at once: they
// take turns migrating. Errors name the URL with its password redacted.
func OpenPostgres(ctx context.Context, databaseURL string) (*Store, error) {
	where := Redact(databaseURL)
	if !isPostgresURL(databaseURL) {
		return nil, fmt.Errorf("open postgres %s: the URL must start with postgres:// or postgresql://", where)
	}
	// url.Parse errors quote the URL, password and all, and pgx passes some
	// on: catch those here with a message of our own.
	if _, err := url.Parse(databaseURL); err != nil {
		return nil, fmt.Errorf("open postgres %s: not a valid URL", where)
	}
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("open postgres %s: %w", where, err) // pgx redacts the password of a URL that parses
	}
	db := stdlib.OpenDB(*cfg)
	// Unlike SQLite, PostgreSQL runs writers side by side: one pool serves
	// reads and writes. Keep connections around; opening one costs a process.
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(20)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{w: db, r: readDB{db}, d: postgres}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres %s: %w", where, err)
	}
	if err := s.migrateExclusive(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres %s: %w", where, err)
	}
	return s, nil
}

// migrateExclusive migrates while holding a transaction-scoped advisory
// lock, so that instances starting together apply each migration once: the
// first migrates, the others wait, then find nothing left to do. Ending the
// lock's transaction, or losing its connection, releases the lock.
func (s *Store) migrateExclusive(ctx context.Context) error {
	lock, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("lock for migrations: %w", err)
	}
	defer lock.Rollback() // ends the transaction, releasing the lock
	if _, err := lock.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
		return fmt.Errorf("lock for migrations: %w", err)
	}
	_, err = s.migrate(ctx)
	return err
}

// Redact returns a database URL fit for log lines and error messages: its
// password, and any password parameter, replaced by "xxxxx". A URL that
// holds no password comes back unchanged; one that does not parse but might
// hold a password comes back as a placeholder.
func Redact(databaseURL string) string { return config.RedactURL(databaseURL) }
