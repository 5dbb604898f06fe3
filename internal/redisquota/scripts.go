package redisquota

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// The scripts, each the prelude and a body. Run sends EVALSHA and falls back
// to EVAL on NOSCRIPT, so nothing depends on SCRIPT LOAD being allowed or on
// the script cache surviving a restart or failover.
var (
	//go:embed lua/prelude.lua
	prelude string
	//go:embed lua/acquire.lua
	acquireBody string
	//go:embed lua/settle.lua
	settleBody string
	//go:embed lua/heartbeat.lua
	heartbeatBody string
	//go:embed lua/use.lua
	useBody string
	//go:embed lua/restore.lua
	restoreBody string
	//go:embed lua/charge.lua
	chargeBody string
	//go:embed lua/instances.lua
	instancesBody string
	//go:embed lua/lookup.lua
	lookupBody string
	//go:embed lua/void.lua
	voidBody string

	acquireScript   = redis.NewScript(prelude + acquireBody)
	settleScript    = redis.NewScript(prelude + settleBody)
	heartbeatScript = redis.NewScript(prelude + heartbeatBody)
	useScript       = redis.NewScript(prelude + useBody)
	restoreScript   = redis.NewScript(prelude + restoreBody)
	chargeScript    = redis.NewScript(prelude + chargeBody)
	lookupScript    = redis.NewScript(prelude + lookupBody)
	voidScript      = redis.NewScript(prelude + voidBody)
	// The registry's script needs nothing of the prelude.
	instancesScript = redis.NewScript(instancesBody)
)
