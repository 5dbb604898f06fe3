// Package sqlstore persists Sluice's data in SQL: SQLite (the embedded
// default, one file in WAL mode, no cgo) or PostgreSQL (shared by several
// instances), through one set of embedded, versioned migrations and one set
// of queries.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/sluicehq/sluice/internal/errs"
)

// dialect is what differs between the SQL engines.
type dialect struct {
	name     string
	dollar   bool                 // $1 placeholders instead of ?
	isUnique func(err error) bool // a unique-constraint violation
}

// rebind turns ? placeholders into the dialect's.
func (d dialect) rebind(q string) string {
	if !d.dollar {
		return q
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

var sqlite = dialect{
	name:   "sqlite",
	dollar: false,
	isUnique: func(err error) bool {
		var c interface{ Code() int }
		if errors.As(err, &c) {
			// SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
			return c.Code() == 2067 || c.Code() == 1555
		}
		return false
	},
}

// Store is a SQL database holding Sluice's state. Writes go through w; reads
// through r (for SQLite a separate pool of read-only connections, so that
// readers never queue behind the single writer; for PostgreSQL the same
// pool as w).
type Store struct {
	w *sql.DB
	r readDB
	d dialect

	// SQLite: the checkpointing connection, and its goroutine's stop and
	// done.
	ckpt               *sql.DB
	ckptStop, ckptDone chan struct{}

	roll *rollupLog // SQLite: the use of committed events not yet in usage_rollups
}

// readDB is the pool reads use. Its transactions are declared read-only:
// on PostgreSQL, where reads share the writers' pool, that is what keeps a
// View from writing.
type readDB struct{ *sql.DB }

// BeginTx begins a read-only transaction.
func (r readDB) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	ro := sql.TxOptions{ReadOnly: true}
	if opts != nil {
		ro.Isolation = opts.Isolation
	}
	return r.DB.BeginTx(ctx, &ro)
}

// beginner is a pool that begins transactions: w, or r.
// querier is a pool or a transaction.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

type beginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// OpenSQLite opens (creating if needed) the SQLite database at path and
// brings its schema up to date. path ":memory:" is not supported: use a file
// in a temporary directory.
func OpenSQLite(ctx context.Context, path string) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite path %s: %w", path, err)
	}
	base := "file:" + (&url.URL{Path: abs}).EscapedPath()
	pragmas := "?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	// The writer checkpoints the WAL into the database itself only when it
	// is far behind (wal_autocheckpoint, 10,000 pages, ~40 MB): checkpoint
	// runs that on a connection of its own, off the path of commits.
	w, err := sql.Open("sqlite", base+pragmas+"&_pragma=wal_autocheckpoint(10000)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	// SQLite has one writer at a time; one connection makes writers queue in
	// Go rather than spin on SQLITE_BUSY.
	w.SetMaxOpenConns(1)
	s := &Store{w: w, d: sqlite}
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if _, err := s.migrate(ctx); err != nil {
		w.Close()
		return nil, err
	}
	if err := s.openRollups(ctx); err != nil {
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", base+pragmas+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	r.SetMaxOpenConns(8)
	s.r = readDB{r}
	ckpt, err := sql.Open("sqlite", base+pragmas)
	if err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	ckpt.SetMaxOpenConns(1)
	s.ckpt = ckpt
	s.ckptStop, s.ckptDone = make(chan struct{}), make(chan struct{})
	go s.checkpoint()
	return s, nil
}

// stopCheckpoint stops checkpoint and closes its connection.
func (s *Store) stopCheckpoint() error {
	if s.ckpt == nil {
		return nil
	}
	close(s.ckptStop)
	<-s.ckptDone
	return s.ckpt.Close()
}

// checkpointEvery is how often checkpoint copies the WAL into the database.
const checkpointEvery = 100 * time.Millisecond

// checkpoint copies committed pages from the WAL into the database (and
// syncs it) every checkpointEvery until Close, so that the writer does
// not: SQLite's automatic checkpoint runs inside a commit, and its fsyncs
// stall every writer queued behind it (docs/performance.md, durable usage
// writes). PASSIVE never waits for readers or the writer; a checkpoint
// that cannot finish is done by the next.
func (s *Store) checkpoint() {
	defer close(s.ckptDone)
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ckptStop:
			return
		case <-t.C:
		}
		// An error (SQLITE_BUSY at worst) leaves the WAL longer until the
		// next tick; the writer's own checkpoint bounds it.
		_, _ = s.ckpt.Exec("PRAGMA wal_checkpoint(PASSIVE)")
	}
}

// Close folds the use of committed events still pending into the
// roll-ups, and closes the database.
func (s *Store) Close() error {
	var err error
	if l := s.roll; l != nil {
		l.mu.Lock()
		if !l.closed {
			l.closed = true
			if l.idle != nil {
				l.idle.Stop()
			}
			ctx, cancel := context.WithTimeout(context.Background(), foldTimeout)
			// A fold that fails loses nothing: the next open folds the
			// events above the mark.
			err = s.foldPending(ctx)
			cancel()
			l.closeStmts()
			err = errors.Join(err, s.stopCheckpoint())
		}
		l.mu.Unlock()
	}
	err = errors.Join(err, s.w.Close())
	if s.r.DB != nil && s.r.DB != s.w {
		err = errors.Join(err, s.r.Close())
	}
	return err
}

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.w.PingContext(ctx); err != nil {
		return errs.Wrap(err, "database unreachable")
	}
	var one int
	if err := s.r.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return errs.Wrap(err, "database unreachable")
	}
	return nil
}

// Version returns the schema version the database is at.
func (s *Store) Version(ctx context.Context) (int, error) {
	var v int
	err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// Dialect names the SQL engine ("sqlite", "postgres").
func (s *Store) Dialect() string { return s.d.name }

func (s *Store) tx(ctx context.Context, db beginner, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return dbError(err, "begin transaction")
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return dbError(err, "commit")
	}
	return nil
}

// dbError classifies a database error: a cancelled or timed-out request is
// unavailable (the caller went away or ran out of time), anything else is
// internal.
func dbError(err error, what string) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &errs.Error{Code: errs.Unavailable, Message: "request cancelled or timed out", Err: err}
	}
	return errs.Wrap(err, "%s", what)
}

// conn is a transaction plus what the query helpers need.
type conn struct {
	ctx context.Context
	tx  *sql.Tx
	d   dialect
}

func (c *conn) exec(q string, args ...any) (sql.Result, error) {
	res, err := c.tx.ExecContext(c.ctx, c.d.rebind(q), args...)
	if err != nil {
		return nil, c.wrap(err)
	}
	return res, nil
}

func (c *conn) query(q string, args ...any) (*sql.Rows, error) {
	rows, err := c.tx.QueryContext(c.ctx, c.d.rebind(q), args...)
	if err != nil {
		return nil, c.wrap(err)
	}
	return rows, nil
}

func (c *conn) queryRow(q string, args ...any) *sql.Row {
	return c.tx.QueryRowContext(c.ctx, c.d.rebind(q), args...)
}

func (c *conn) wrap(err error) error {
	if c.d.isUnique(err) {
		return errs.Field(errs.Conflict, "name", "the name is already taken here")
	}
	return dbError(err, "database")
}

// affected turns "no rows changed" into not found.
func affected(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return errs.Wrap(err, "rows affected")
	}
	if n == 0 {
		return errs.E(errs.NotFound, "%s not found", what)
	}
	return nil
}
