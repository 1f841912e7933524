package app

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/action/builtin"
	"github.com/quell-ir/quell/internal/config"
)

// registerActions adds every action this build offers that the
// configuration enables. Providers are registered here and nowhere else.
func registerActions(reg *action.Registry, cfg config.Config, log *slog.Logger, mr prometheus.Registerer) error {
	return builtin.Register(reg, cfg.Actions, log, mr, nil)
}
