package config_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
)

// env is a getenv backed by a map.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// fieldOf returns the Field of the *errs.Error in err's chain.
func fieldOf(t *testing.T, err error) string {
	t.Helper()
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v (%T), want an *errs.Error", err, err)
	}
	return e.Field
}

func TestDefaultValidates(t *testing.T) {
	c := config.Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v, want nil", err)
	}
	if got, want := c.SQLitePath(), "./data/sluice.db"; got != want {
		t.Errorf("Default().SQLitePath() = %q, want %q", got, want)
	}
}

func TestParse(t *testing.T) {
	const valid = `
# a comment
addr: 0.0.0.0:9000
data_dir: /var/lib/sluice
database_url: sqlite:/srv/sluice.db
admin_key: sk-file-secret
log_level: debug
log_format: text
max_body_bytes: 2048
shutdown_timeout: 2m30s
quota_engine: lease
`
	c := config.Default()
	if err := c.Parse(strings.NewReader(valid)); err != nil {
		t.Fatalf("Parse(valid) = %v, want nil", err)
	}
	want := config.Config{
		Addr:            "0.0.0.0:9000",
		DataDir:         "/var/lib/sluice",
		DatabaseURL:     "sqlite:/srv/sluice.db",
		AdminKey:        "sk-file-secret",
		LogLevel:        "debug",
		LogFormat:       "text",
		MaxBodyBytes:    2048,
		ShutdownTimeout: config.Duration(150 * time.Second),

		DefaultGlobalRate:  "100/min",
		UsageFlushInterval: config.Duration(100 * time.Millisecond),
		PolicyPollInterval: config.Duration(500 * time.Millisecond),
		RedisTimeout:       config.Duration(100 * time.Millisecond),
		RedisProbeTimeout:  config.Duration(2 * time.Second),
		RedisTripAfter:     3,
		QuotaEngine:        "lease",
		Sandbox:            config.Sandbox{Unenforced: "refuse", Workers: 2},
		RedisPrefix:        "sluice",
		UsageQueueMax:      100_000,
		SettleOverrun:      config.Default().SettleOverrun,
		SettleSanity:       config.Default().SettleSanity,
		Routing:            config.Default().Routing,
		Gateway:            config.Default().Gateway,
		Admission:          config.Default().Admission,
		Langflow:           config.Default().Langflow,
		SecretKeyEnv:       config.Default().SecretKeyEnv,
		Files:              config.Default().Files,
		Vectors:            config.Default().Vectors,
		Tools:              config.Default().Tools,
		Alerts:             config.Default().Alerts,
		Console:            config.Default().Console,

		MaxToolResponseBytes: 10 << 20, InProcessRunMemory: 512 << 20, InProcessRunReserve: 4 << 20,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse(valid) = %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() after Parse(valid) = %v, want nil", err)
	}
}

func TestParseKeepsUnsetDefaults(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"empty", ""},
		{"comment only", "# nothing here\n"},
		{"one field", "log_level: warn\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if err := c.Parse(strings.NewReader(tt.yaml)); err != nil {
				t.Fatalf("Parse(%q) = %v, want nil", tt.yaml, err)
			}
			want := config.Default()
			if strings.Contains(tt.yaml, "log_level") {
				want.LogLevel = "warn"
			}
			if !reflect.DeepEqual(c, want) {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.yaml, c, want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"unknown field", "addr: 127.0.0.1:1\nlisten: 127.0.0.1:2\n"},
		{"misspelt field", "log_levle: debug\n"},
		{"bad duration", "shutdown_timeout: fifteen\n"},
		{"duration without unit", "shutdown_timeout: 15\n"},
		{"number is not a number", "max_body_bytes: lots\n"},
		{"not a mapping", "- addr\n- data_dir\n"},
		{"broken yaml", "addr: [unclosed\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			err := c.Parse(strings.NewReader(tt.yaml))
			if !errs.Is(err, errs.Invalid) {
				t.Errorf("Parse(%q) = %v (code %q), want code %q", tt.yaml, err, errs.CodeOf(err), errs.Invalid)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	const file = `
addr: 10.0.0.1:80
data_dir: /from/file
log_level: debug
log_format: text
max_body_bytes: 4096
shutdown_timeout: 5s
admin_key: file-key
`
	tests := []struct {
		name   string
		env    map[string]string
		modify func(c *config.Config) // the expected changes to the file's config
	}{
		{"no variables keeps the file", nil, func(*config.Config) {}},
		{"empty variables keep the file", map[string]string{"SLUICE_ADDR": "", "SLUICE_LOG_LEVEL": ""}, func(*config.Config) {}},
		{"addr", map[string]string{"SLUICE_ADDR": ":9999"}, func(c *config.Config) { c.Addr = ":9999" }},
		{"data dir", map[string]string{"SLUICE_DATA": "/from/env"}, func(c *config.Config) { c.DataDir = "/from/env" }},
		{"database url", map[string]string{"SLUICE_DATABASE_URL": "sqlite:/e.db"}, func(c *config.Config) { c.DatabaseURL = "sqlite:/e.db" }},
		{"log level", map[string]string{"SLUICE_LOG_LEVEL": "error"}, func(c *config.Config) { c.LogLevel = "error" }},
		{"log format", map[string]string{"SLUICE_LOG_FORMAT": "json"}, func(c *config.Config) { c.LogFormat = "json" }},
		{"admin key", map[string]string{"SLUICE_ADMIN_KEY": "env-key"}, func(c *config.Config) { c.AdminKey = "env-key" }},
		{"max body", map[string]string{"SLUICE_MAX_BODY_BYTES": "65536"}, func(c *config.Config) { c.MaxBodyBytes = 65536 }},
		{"shutdown", map[string]string{"SLUICE_SHUTDOWN_TIMEOUT": "1m"}, func(c *config.Config) { c.ShutdownTimeout = config.Duration(time.Minute) }},
		{"redis cluster off", map[string]string{"SLUICE_REDIS_CLUSTER": "false"}, func(*config.Config) {}},
		{
			"all at once",
			map[string]string{
				"SLUICE_ADDR": "127.0.0.1:1", "SLUICE_DATA": "/d", "SLUICE_DATABASE_URL": "sqlite:/x.db",
				"SLUICE_LOG_LEVEL": "warn", "SLUICE_LOG_FORMAT": "json", "SLUICE_ADMIN_KEY": "k",
				"SLUICE_MAX_BODY_BYTES": "1024", "SLUICE_SHUTDOWN_TIMEOUT": "250ms",
			},
			func(c *config.Config) {
				*c = config.Config{
					Addr: "127.0.0.1:1", DataDir: "/d", DatabaseURL: "sqlite:/x.db", LogLevel: "warn", LogFormat: "json",
					AdminKey: "k", MaxBodyBytes: 1024, ShutdownTimeout: config.Duration(250 * time.Millisecond),
					DefaultGlobalRate: "100/min", UsageFlushInterval: config.Duration(100 * time.Millisecond),
					PolicyPollInterval: config.Duration(500 * time.Millisecond), RedisTimeout: config.Duration(100 * time.Millisecond),
					RedisProbeTimeout: config.Duration(2 * time.Second), RedisTripAfter: 3, QuotaEngine: "script",
					Sandbox:     config.Sandbox{Unenforced: "refuse", Workers: 2},
					RedisPrefix: "sluice", UsageQueueMax: 100_000,
					SettleOverrun: config.Default().SettleOverrun, SettleSanity: config.Default().SettleSanity,
					Routing: config.Default().Routing, Gateway: config.Default().Gateway, Admission: config.Default().Admission, Langflow: config.Default().Langflow, SecretKeyEnv: config.Default().SecretKeyEnv, Files: config.Default().Files, Vectors: config.Default().Vectors,
					Tools: config.Default().Tools, Alerts: config.Default().Alerts, Console: config.Default().Console,

					MaxToolResponseBytes: 10 << 20, InProcessRunMemory: 512 << 20, InProcessRunReserve: 4 << 20,
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if err := c.Parse(strings.NewReader(file)); err != nil {
				t.Fatalf("Parse = %v, want nil", err)
			}
			want := c
			tt.modify(&want)
			if err := c.Env(env(tt.env)); err != nil {
				t.Fatalf("Env = %v, want nil", err)
			}
			if !reflect.DeepEqual(c, want) {
				t.Errorf("after Env got %+v, want %+v", c, want)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestEnvErrors(t *testing.T) {
	tests := []struct {
		name, key, value string
	}{
		{"max body not a number", "SLUICE_MAX_BODY_BYTES", "1MB"},
		{"max body fraction", "SLUICE_MAX_BODY_BYTES", "1.5"},
		{"shutdown not a duration", "SLUICE_SHUTDOWN_TIMEOUT", "soon"},
		{"shutdown without unit", "SLUICE_SHUTDOWN_TIMEOUT", "15"},
		{"redis cluster not a bool", "SLUICE_REDIS_CLUSTER", "yes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			before := c
			err := c.Env(env(map[string]string{tt.key: tt.value}))
			if !errs.Is(err, errs.Invalid) {
				t.Fatalf("Env(%s=%q) = %v (code %q), want code %q", tt.key, tt.value, err, errs.CodeOf(err), errs.Invalid)
			}
			if got := fieldOf(t, err); got != tt.key {
				t.Errorf("Env(%s=%q) field = %q, want %q", tt.key, tt.value, got, tt.key)
			}
			if !reflect.DeepEqual(c, before) {
				t.Errorf("after a failed Env got %+v, want the config unchanged %+v", c, before)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *config.Config)
		field  string // "" means valid
	}{
		{"addr without port", func(c *config.Config) { c.Addr = "localhost" }, "addr"},
		{"addr empty", func(c *config.Config) { c.Addr = "" }, "addr"},
		{"addr url", func(c *config.Config) { c.Addr = "http://127.0.0.1:8080" }, "addr"},
		{"addr port only", func(c *config.Config) { c.Addr = ":8080" }, ""},
		{"addr ipv6", func(c *config.Config) { c.Addr = "[::1]:8080" }, ""},
		{"data_dir empty", func(c *config.Config) { c.DataDir = "" }, "data_dir"},
		{"files.max_file_bytes under 1KiB", func(c *config.Config) { c.Files.MaxFileBytes = 1023 }, "files.max_file_bytes"},
		{"files.max_file_bytes over 1GiB", func(c *config.Config) { c.Files.MaxFileBytes = 1<<30 + 1 }, "files.max_file_bytes"},
		{"files.project_quota under max_file_bytes", func(c *config.Config) { c.Files.ProjectQuota = c.Files.MaxFileBytes - 1 }, "files.project_quota"},
		{"files.project_quota equal to max_file_bytes", func(c *config.Config) { c.Files.ProjectQuota = c.Files.MaxFileBytes }, ""},
		{"files.project_quota over 1TiB", func(c *config.Config) { c.Files.ProjectQuota = 1<<40 + 1 }, "files.project_quota"},
		{"database_url postgres", func(c *config.Config) { c.DatabaseURL = "postgres://localhost/sluice" }, ""},
		{"database_url postgres with password", func(c *config.Config) {
			c.DatabaseURL = "postgres://sluice:pw@db.internal:5432/sluice?sslmode=verify-full"
		}, ""},
		{"database_url postgresql", func(c *config.Config) { c.DatabaseURL = "postgresql://sluice@db/sluice" }, ""},
		{"database_url postgres unparseable", func(c *config.Config) { c.DatabaseURL = "postgres://u:p%zz@db/sluice" }, "database_url"},
		{"database_url postgres without slashes", func(c *config.Config) { c.DatabaseURL = "postgres:db/sluice" }, "database_url"},
		{"database_url mysql", func(c *config.Config) { c.DatabaseURL = "mysql://root@localhost/sluice" }, "database_url"},
		{"database_url upper-case scheme", func(c *config.Config) { c.DatabaseURL = "POSTGRES://localhost/sluice" }, "database_url"},
		{"database_url path without scheme", func(c *config.Config) { c.DatabaseURL = "/srv/sluice.db" }, "database_url"},
		{"database_url sqlite", func(c *config.Config) { c.DatabaseURL = "sqlite:/srv/sluice.db" }, ""},
		{"database_url sqlite without path", func(c *config.Config) { c.DatabaseURL = "sqlite:" }, ""},
		{"log_level unknown", func(c *config.Config) { c.LogLevel = "verbose" }, "log_level"},
		{"log_level empty", func(c *config.Config) { c.LogLevel = "" }, "log_level"},
		{"log_level upper case", func(c *config.Config) { c.LogLevel = "INFO" }, "log_level"},
		{"log_level warn", func(c *config.Config) { c.LogLevel = "warn" }, ""},
		{"log_format unknown", func(c *config.Config) { c.LogFormat = "logfmt" }, "log_format"},
		{"log_format empty", func(c *config.Config) { c.LogFormat = "" }, "log_format"},
		{"log_format text", func(c *config.Config) { c.LogFormat = "text" }, ""},
		{"tools base_url local", func(c *config.Config) { c.Tools.Tavily.BaseURL = "http://127.0.0.1:9000" }, ""},
		{"tools base_url not http", func(c *config.Config) { c.Tools.ArXiv.BaseURL = "ftp://mirror" }, "tools.arxiv.base_url"},
		{"tools base_url with key in query", func(c *config.Config) { c.Tools.SearchAPI.BaseURL = "https://s.example?api_key=x" }, "tools.searchapi.base_url"},
		{"tools api_key_env not a name", func(c *config.Config) { c.Tools.Tavily.APIKeyEnv = "tvly-abc key" }, "tools.tavily.api_key_env"},
		{"max_body_bytes zero", func(c *config.Config) { c.MaxBodyBytes = 0 }, "max_body_bytes"},
		{"max_body_bytes negative", func(c *config.Config) { c.MaxBodyBytes = -1 }, "max_body_bytes"},
		{"max_body_bytes below minimum", func(c *config.Config) { c.MaxBodyBytes = 1023 }, "max_body_bytes"},
		{"max_body_bytes minimum", func(c *config.Config) { c.MaxBodyBytes = 1024 }, ""},
		{"max_body_bytes maximum", func(c *config.Config) { c.MaxBodyBytes = 64 << 20 }, ""},
		{"max_body_bytes above maximum", func(c *config.Config) { c.MaxBodyBytes = 64<<20 + 1 }, "max_body_bytes"},
		{"shutdown_timeout zero", func(c *config.Config) { c.ShutdownTimeout = 0 }, "shutdown_timeout"},
		{"shutdown_timeout negative", func(c *config.Config) { c.ShutdownTimeout = config.Duration(-time.Second) }, "shutdown_timeout"},
		{"shutdown_timeout 1ns", func(c *config.Config) { c.ShutdownTimeout = 1 }, ""},
		{"quota_engine lease", func(c *config.Config) { c.QuotaEngine = "lease" }, ""},
		{"quota_engine script", func(c *config.Config) { c.QuotaEngine = "script" }, ""},
		{"quota_engine empty", func(c *config.Config) { c.QuotaEngine = "" }, "quota_engine"},
		{"quota_engine unknown", func(c *config.Config) { c.QuotaEngine = "leases" }, "quota_engine"},
		{"redis_cluster lease", cluster("redis://10.0.0.1:6379?addr=10.0.0.2:6379&addr=10.0.0.3:6379", "lease"), ""},
		{"redis_cluster one seed", cluster("redis://:pw@10.0.0.1:6379", "lease"), ""},
		{"redis_cluster rediss", cluster("rediss://10.0.0.1:6379?addr=10.0.0.2:6379", "lease"), ""},
		{"redis_cluster script engine", cluster("redis://10.0.0.1:6379?addr=10.0.0.2:6379", "script"), "redis_cluster"},
		{"redis_cluster without redis_url", cluster("", "lease"), "redis_cluster"},
		{"redis_cluster unix socket", cluster("unix:///run/redis.sock", "lease"), "redis_url"},
		{"redis_cluster bad addr", cluster("redis://10.0.0.1:6379?addr=10.0.0.2", "lease"), "redis_url"},
		{"redis_cluster database number", cluster("redis://10.0.0.1:6379/0", "lease"), ""},
		{"redis_cluster unknown option", cluster("redis://10.0.0.1:6379?adr=10.0.0.2:6379", "lease"), "redis_url"},
		{"redis_cluster unparseable", cluster("redis://u:p%zz@10.0.0.1:6379", "lease"), "redis_url"},
		{"redis_cluster off with a single url", func(c *config.Config) { c.RedisURL = "redis://10.0.0.1:6379/0" }, ""},
		{"routing.cooldown_after negative", func(c *config.Config) { c.Routing.CooldownAfter = -1 }, "routing.cooldown_after"},
		{"routing.cooldown_after 0 (never)", func(c *config.Config) { c.Routing.CooldownAfter = 0 }, ""},
		{"routing.cooldown_for zero", func(c *config.Config) { c.Routing.CooldownFor = 0 }, "routing.cooldown_for"},
		{"routing.cooldown_for a day", func(c *config.Config) { c.Routing.CooldownFor = config.Duration(24 * time.Hour) }, "routing.cooldown_for"},
		{"routing.retries negative", func(c *config.Config) { c.Routing.Retries = -1 }, "routing.retries"},
		{"routing.retries 0", func(c *config.Config) { c.Routing.Retries = 0 }, ""},
		{"routing.retries 11", func(c *config.Config) { c.Routing.Retries = 11 }, "routing.retries"},
		{"routing.backoff negative", func(c *config.Config) { c.Routing.Backoff = config.Duration(-time.Millisecond) }, "routing.backoff"},
		{"routing.backoff 0", func(c *config.Config) { c.Routing.Backoff = 0 }, ""},
		{"routing.attempt_timeout negative", func(c *config.Config) { c.Routing.AttemptTimeout = config.Duration(-time.Second) }, "routing.attempt_timeout"},
		{"routing.attempt_timeout 20s", func(c *config.Config) { c.Routing.AttemptTimeout = config.Duration(20 * time.Second) }, ""},
		{"models deployment base_url", func(c *config.Config) {
			c.Models = []llm.ModelConfig{{Name: "m", Provider: "openai", Deployments: []llm.DeploymentConfig{{BaseURL: "east"}}}}
		}, "models[0].deployments[0].base_url"},
		{"models unknown fallback", func(c *config.Config) {
			c.Models = []llm.ModelConfig{{Name: "m", Provider: "openai", Fallbacks: []string{"n"}}}
		}, "models[0].fallbacks[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			tt.modify(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errs.Is(err, errs.Invalid) {
				t.Fatalf("Validate() = %v (code %q), want code %q", err, errs.CodeOf(err), errs.Invalid)
			}
			if got := fieldOf(t, err); got != tt.field {
				t.Errorf("Validate() field = %q, want %q", got, tt.field)
			}
		})
	}
}

// cluster sets redis_cluster with url and engine.
func cluster(url, engine string) func(*config.Config) {
	return func(c *config.Config) { c.RedisCluster, c.RedisURL, c.QuotaEngine = true, url, engine }
}

// TestRedisClusterFromEnv: SLUICE_REDIS_CLUSTER turns it on, the lease
// engine is then required, and the printed config shows it.
func TestRedisClusterFromEnv(t *testing.T) {
	c := config.Default()
	if err := c.Env(env(map[string]string{"SLUICE_REDIS_CLUSTER": "true", "SLUICE_REDIS_URL": "redis://:pw@10.0.0.1:7000?addr=10.0.0.2:7000"})); err != nil {
		t.Fatalf("Env = %v, want nil", err)
	}
	if !c.RedisCluster {
		t.Fatal("RedisCluster = false, want true")
	}
	if got := fieldOf(t, c.Validate()); got != "redis_cluster" {
		t.Errorf("Validate() with the script engine: field %q, want redis_cluster", got)
	}
	c.QuotaEngine = config.QuotaEngineLease
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
	s := c.String()
	if !strings.Contains(s, "redis_cluster: true") || !strings.Contains(s, "redis_url: redis://:xxxxx@10.0.0.1:7000?addr=10.0.0.2:7000") {
		t.Errorf("String() = %q, want redis_cluster: true and the seed URL without its password", s)
	}
}

// TestValidateClusterKeepsPassword: a seed URL that does not parse is
// refused without its password in the message.
func TestValidateClusterKeepsPassword(t *testing.T) {
	const password = "redis-TOP-SECRET-91c4"
	for _, u := range []string{
		"redis://u:" + password + "%zz@10.0.0.1:6379",
		"redis://u:" + password + "@10.0.0.1:6379?addr=nope",
		"redis://u:" + password + "@10.0.0.1:6379?password=" + password,
	} {
		c := config.Default()
		cluster(u, "lease")(&c)
		err := c.Validate()
		if got := fieldOf(t, err); got != "redis_url" {
			t.Errorf("Validate(%s) field = %q, want redis_url", u, got)
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("Validate() = %q, want no %q in it", err, password)
		}
	}
}

func TestStringRedactsAdminKey(t *testing.T) {
	const secret = "sk-TOP-SECRET-5f2a9c"
	tests := []struct {
		name string
		load func(t *testing.T) config.Config
	}{
		{"set directly", func(*testing.T) config.Config {
			c := config.Default()
			c.AdminKey = secret
			return c
		}},
		{"from yaml", func(t *testing.T) config.Config {
			c := config.Default()
			if err := c.Parse(strings.NewReader("admin_key: " + secret + "\n")); err != nil {
				t.Fatalf("Parse = %v, want nil", err)
			}
			return c
		}},
		{"from env", func(t *testing.T) config.Config {
			c := config.Default()
			if err := c.Env(env(map[string]string{"SLUICE_ADMIN_KEY": secret})); err != nil {
				t.Fatalf("Env = %v, want nil", err)
			}
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.load(t)
			if c.AdminKey != secret {
				t.Fatalf("AdminKey = %q, want the secret loaded", string(c.AdminKey))
			}
			printed := map[string]string{
				"String()":          c.String(),
				"(&c).String()":     (&c).String(),
				"AdminKey.String()": c.AdminKey.String(),
				"%v":                fmt.Sprintf("%v", c),
				"%+v":               fmt.Sprintf("%+v", c),
				"%s of AdminKey":    fmt.Sprintf("%s", c.AdminKey),
			}
			for how, s := range printed {
				if strings.Contains(s, secret) {
					t.Errorf("%s = %q, want no %q in it", how, s, secret)
				}
				if !strings.Contains(s, "<redacted>") {
					t.Errorf("%s = %q, want %q in it", how, s, "<redacted>")
				}
			}
			// The rest of the config still prints.
			if s := c.String(); !strings.Contains(s, "addr: 127.0.0.1:8080") || !strings.Contains(s, "shutdown_timeout: 15s") {
				t.Errorf("String() = %q, want addr and shutdown_timeout printed", s)
			}
		})
	}
}

func TestStringRedactsDatabasePassword(t *testing.T) {
	const password = "pg-TOP-SECRET-77e1"
	tests := []struct {
		name, url, want string
	}{
		{"userinfo", "postgres://sluice:" + password + "@db.internal:5432/sluice?sslmode=verify-full",
			"database_url: postgres://sluice:xxxxx@db.internal:5432/sluice?sslmode=verify-full"},
		{"postgresql scheme", "postgresql://sluice:" + password + "@db/sluice", "database_url: postgresql://sluice:xxxxx@db/sluice"},
		{"query parameter", "postgres://db/sluice?user=sluice&password=" + password, "database_url: postgres://db/sluice?password=xxxxx&user=sluice"},
		{"unparseable", "postgres://sluice:" + password + "%zz@db/sluice", "database_url: <unparseable database URL>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if err := c.Env(env(map[string]string{"SLUICE_DATABASE_URL": tt.url})); err != nil {
				t.Fatalf("Env = %v, want nil", err)
			}
			if c.DatabaseURL != tt.url {
				t.Fatalf("DatabaseURL = %q, want the URL loaded unchanged", c.DatabaseURL)
			}
			for how, s := range map[string]string{
				"String()":      c.String(),
				"(&c).String()": (&c).String(),
				"%v":            fmt.Sprintf("%v", c),
				"%+v":           fmt.Sprintf("%+v", c),
				"Validate()":    fmt.Sprint(c.Validate()),
			} {
				if strings.Contains(s, password) {
					t.Errorf("%s = %q, want no %q in it", how, s, password)
				}
			}
			if s := c.String(); !strings.Contains(s, tt.want) {
				t.Errorf("String() = %q, want %q in it", s, tt.want)
			}
		})
	}
	// A URL without a password prints as it is.
	c := config.Default()
	c.DatabaseURL = "postgres://sluice@db/sluice?sslmode=require"
	if s := c.String(); !strings.Contains(s, "database_url: postgres://sluice@db/sluice?sslmode=require") {
		t.Errorf("String() = %q, want the URL unchanged", s)
	}
}

func TestStringRoundTrips(t *testing.T) {
	// A printed config (without a secret) parses back to itself.
	c := config.Default()
	c.DatabaseURL = "sqlite:/srv/s.db"
	c.ShutdownTimeout = config.Duration(90 * time.Second)
	var back config.Config
	if err := back.Parse(strings.NewReader(c.String())); err != nil {
		t.Fatalf("Parse(String()) = %v, want nil", err)
	}
	// Compared in print: an empty list prints as [] and parses back empty,
	// not nil.
	if back.String() != c.String() {
		t.Errorf("Parse(String()) = %+v, want %+v", back, c)
	}
}

func TestSQLitePath(t *testing.T) {
	tests := []struct {
		dataDir, databaseURL, want string
	}{
		{"./data", "", "./data/sluice.db"},
		{"/var/lib/sluice", "", "/var/lib/sluice/sluice.db"},
		{"/var/lib/sluice/", "", "/var/lib/sluice/sluice.db"},
		{"data//", "", "data/sluice.db"},
		{"/var/lib/sluice", "sqlite:/srv/other.db", "/srv/other.db"},
		{"/var/lib/sluice", "sqlite:relative.db", "relative.db"},
		{"/var/lib/sluice", "sqlite:", "/var/lib/sluice/sluice.db"},
	}
	for _, tt := range tests {
		t.Run(tt.dataDir+"|"+tt.databaseURL, func(t *testing.T) {
			c := config.Default()
			c.DataDir, c.DatabaseURL = tt.dataDir, tt.databaseURL
			if got := c.SQLitePath(); got != tt.want {
				t.Errorf("SQLitePath() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	c := config.Default()
	err := c.LoadFile(t.TempDir() + "/missing.yaml")
	if !errs.Is(err, errs.Invalid) {
		t.Fatalf("LoadFile(missing) = %v (code %q), want code %q", err, errs.CodeOf(err), errs.Invalid)
	}
	if got := fieldOf(t, err); got != "config" {
		t.Errorf("LoadFile(missing) field = %q, want %q", got, "config")
	}
}

func TestSandbox(t *testing.T) {
	c := config.Default()
	if got, want := c.Sandbox, (config.Sandbox{Unenforced: config.UnenforcedRefuse, Workers: 2}); !reflect.DeepEqual(got, want) {
		t.Fatalf("Default().Sandbox = %+v, want %+v", got, want)
	}
	const file = `
sandbox:
  unenforced: run
  workers: 4
  cgroup_root: /sys/fs/cgroup/sluice.slice
  worker_command: [/usr/bin/unshare, --net, /usr/local/bin/sluice, worker]
  worker_env: [GOMAXPROCS=1, TZ=UTC]
`
	if err := c.Parse(strings.NewReader(file)); err != nil {
		t.Fatalf("Parse = %v, want nil", err)
	}
	want := config.Sandbox{Unenforced: "run", Workers: 4, CgroupRoot: "/sys/fs/cgroup/sluice.slice",
		WorkerCommand: []string{"/usr/bin/unshare", "--net", "/usr/local/bin/sluice", "worker"}, WorkerEnv: []string{"GOMAXPROCS=1", "TZ=UTC"}}
	if !reflect.DeepEqual(c.Sandbox, want) {
		t.Errorf("Parse got %+v, want %+v", c.Sandbox, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
	if err := c.Env(env(map[string]string{"SLUICE_SANDBOX_UNENFORCED": "refuse", "SLUICE_SANDBOX_WORKERS": "8", "SLUICE_SANDBOX_CGROUP_ROOT": "none"})); err != nil {
		t.Fatalf("Env = %v, want nil", err)
	}
	want.Unenforced, want.Workers, want.CgroupRoot = "refuse", 8, "none"
	if !reflect.DeepEqual(c.Sandbox, want) {
		t.Errorf("after Env got %+v, want %+v", c.Sandbox, want)
	}
	err := c.Env(env(map[string]string{"SLUICE_SANDBOX_WORKERS": "many"}))
	if got := fieldOf(t, err); got != "SLUICE_SANDBOX_WORKERS" {
		t.Errorf("Env(SLUICE_SANDBOX_WORKERS=many) field = %q, want SLUICE_SANDBOX_WORKERS", got)
	}
}

func TestSandboxValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(s *config.Sandbox)
		field  string // "" means valid
	}{
		{"unenforced run", func(s *config.Sandbox) { s.Unenforced = "run" }, ""},
		{"unenforced empty", func(s *config.Sandbox) { s.Unenforced = "" }, "sandbox.unenforced"},
		{"unenforced unknown", func(s *config.Sandbox) { s.Unenforced = "allow" }, "sandbox.unenforced"},
		{"workers zero", func(s *config.Sandbox) { s.Workers = 0 }, "sandbox.workers"},
		{"workers too many", func(s *config.Sandbox) { s.Workers = 257 }, "sandbox.workers"},
		{"workers one", func(s *config.Sandbox) { s.Workers = 1 }, ""},
		{"cgroup_root none", func(s *config.Sandbox) { s.CgroupRoot = "none" }, ""},
		{"cgroup_root absolute", func(s *config.Sandbox) { s.CgroupRoot = "/sys/fs/cgroup/x" }, ""},
		{"cgroup_root relative", func(s *config.Sandbox) { s.CgroupRoot = "cgroup/x" }, "sandbox.cgroup_root"},
		{"worker_command empty program", func(s *config.Sandbox) { s.WorkerCommand = []string{" ", "worker"} }, "sandbox.worker_command"},
		{"worker_env without =", func(s *config.Sandbox) { s.WorkerEnv = []string{"A=1", "B"} }, "sandbox.worker_env[1]"},
		{"worker_env empty name", func(s *config.Sandbox) { s.WorkerEnv = []string{"=1"} }, "sandbox.worker_env[0]"},
		{"worker_env empty value", func(s *config.Sandbox) { s.WorkerEnv = []string{"A="} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			tt.modify(&c.Sandbox)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errs.Is(err, errs.Invalid) {
				t.Fatalf("Validate() = %v (code %q), want code %q", err, errs.CodeOf(err), errs.Invalid)
			}
			if got := fieldOf(t, err); got != tt.field {
				t.Errorf("Validate() field = %q, want %q", got, tt.field)
			}
		})
	}
}

// TestRouting: the routing section and a model table with deployments and
// fallbacks parse from YAML, validate, and become the registry's options.
func TestRouting(t *testing.T) {
	const file = `
models:
  - name: gpt-4o
    provider: openai
    fallbacks: [gpt-4o-mini]
    deployments:
      - {name: east, base_url: "https://east.example/v1", api_key_env: EAST_KEY, weight: 3, rpm: 500, tpm: 30000}
      - {name: acme, model: gpt-4o-2024-08-06, api_key_env: ACME_KEY, dedicated_to: ["tenant:acme", "plan:enterprise"]}
  - {name: gpt-4o-mini, provider: openai, api_key_env: OPENAI_API_KEY}
routing:
  cooldown_after: 5
  cooldown_for: 1m
  retries: 2
  backoff: 100ms
  attempt_timeout: 20s
`
	c := config.Default()
	if err := c.Parse(strings.NewReader(file)); err != nil {
		t.Fatalf("Parse = %v, want nil", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate = %v, want nil", err)
	}
	want := llm.RouterOptions{CooldownAfter: 5, CooldownFor: time.Minute, Retries: 2, Backoff: 100 * time.Millisecond, AttemptTimeout: 20 * time.Second}
	if got := c.Routing.RouterOptions(); got != want {
		t.Errorf("RouterOptions = %+v, want %+v", got, want)
	}
	d := c.Models[0].Deployments
	if len(d) != 2 || d[0].Weight != 3 || d[0].RPM != 500 || d[0].TPM != 30000 || d[1].Model != "gpt-4o-2024-08-06" ||
		strings.Join(d[1].DedicatedTo, ",") != "tenant:acme,plan:enterprise" || strings.Join(c.Models[0].Fallbacks, ",") != "gpt-4o-mini" {
		t.Errorf("models[0] = %+v, want the deployments and fallbacks of the file", c.Models[0])
	}
	r, err := llm.NewRegistryWith(c.Models, env(map[string]string{"EAST_KEY": "k1", "ACME_KEY": "k2", "OPENAI_API_KEY": "k3"}),
		llm.RegistryOptions{Router: new(c.Routing.RouterOptions())})
	if err != nil {
		t.Fatalf("NewRegistryWith = %v", err)
	}
	if r.RouterOptions() != want {
		t.Errorf("registry options = %+v, want %+v", r.RouterOptions(), want)
	}

	// Unset, the section keeps llm's defaults, and prints them.
	def := config.Default()
	if got := def.Routing.RouterOptions(); got != llm.DefaultRouterOptions() {
		t.Errorf("default RouterOptions = %+v, want llm.DefaultRouterOptions() %+v", got, llm.DefaultRouterOptions())
	}
	if s := def.String(); !strings.Contains(s, "routing:\n    cooldown_after: 3\n    cooldown_for: 30s\n    retries: 1\n    backoff: 200ms\n    attempt_timeout: 0s\n") {
		t.Errorf("String() = %s, want the routing defaults", s)
	}

	for _, bad := range []string{"routing:\n  cooldown_for: soon\n", "routing:\n  cooldwn_after: 3\n", "routing:\n  retries: many\n"} {
		c := config.Default()
		if err := c.Parse(strings.NewReader(bad)); !errs.Is(err, errs.Invalid) {
			t.Errorf("Parse(%q) = %v, want invalid", bad, err)
		}
	}
}

// TestGatewayValidation: the gateway section's bounds name their field.
func TestGatewayValidation(t *testing.T) {
	for field, yaml := range map[string]string{
		"gateway.max_body_bytes":     "gateway:\n  max_body_bytes: 100\n",
		"gateway.default_max_tokens": "gateway:\n  default_max_tokens: 0\n",
		"gateway.usage_commit":       "gateway:\n  usage_commit: later\n",
	} {
		c := config.Default()
		if err := c.Parse(strings.NewReader(yaml)); err != nil {
			t.Fatalf("%s: parse: %v", field, err)
		}
		err := c.Validate()
		var e *errs.Error
		if !errors.As(err, &e) || e.Field != field {
			t.Errorf("%s: Validate() = %v, want an error naming %s", field, err, field)
		}
	}
	c := config.Default()
	if err := c.Parse(strings.NewReader("gateway:\n  max_body_bytes: 16MiB\n  log_prompts: true\n")); err != nil || c.Validate() != nil ||
		c.Gateway.MaxBodyBytes != 16<<20 || !c.Gateway.LogPrompts || c.Gateway.DefaultMaxTokens != 4096 {
		t.Errorf("gateway section: %+v (%v), want 16MiB, prompts logged, default 4096 kept", c.Gateway, err)
	}
}

// TestVectorsValidation: the vectors section's bounds name their field.
func TestVectorsValidation(t *testing.T) {
	for field, yaml := range map[string]string{
		"vectors.max_per_collection": "vectors:\n  max_per_collection: 0\n",
		"vectors.max_collections":    "vectors:\n  max_collections: 100001\n",
		"vectors.max_dimensions":     "vectors:\n  max_dimensions: -1\n",
	} {
		c := config.Default()
		if err := c.Parse(strings.NewReader(yaml)); err != nil {
			t.Fatalf("%s: parse: %v", field, err)
		}
		var e *errs.Error
		if err := c.Validate(); !errors.As(err, &e) || e.Field != field {
			t.Errorf("%s: Validate() = %v, want an error naming %s", field, err, field)
		}
	}
	c := config.Default()
	if err := c.Parse(strings.NewReader("vectors:\n  persist: false\n  max_per_collection: 500\n")); err != nil || c.Validate() != nil ||
		c.Vectors.Persist || c.Vectors.MaxPerCollection != 500 || c.Vectors.MaxDimensions != 4096 {
		t.Errorf("vectors section: %+v (%v), want in memory, 500 per collection, default dimensions kept", c.Vectors, err)
	}
}
