package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/rollout"
)

// rolloutError maps the controller's errors to statuses.
func rolloutError(err error) error {
	var se *rollout.SpecError
	var ce *rollout.ConflictError
	var ne *rollout.NotFoundError
	switch {
	case errors.As(err, &se):
		return echo.NewHTTPError(http.StatusBadRequest, se.Msg)
	case errors.As(err, &ne):
		return echo.NewHTTPError(http.StatusNotFound, ne.Error())
	case errors.As(err, &ce):
		return echo.NewHTTPError(http.StatusConflict, ce.Msg)
	case errors.Is(err, rollout.ErrRunning):
		return echo.NewHTTPError(http.StatusConflict, err.Error())
	}
	return err
}

func (a *api) startRollout(c echo.Context) error {
	var spec rollout.Spec
	dec := json.NewDecoder(http.MaxBytesReader(c.Response(), c.Request().Body, 64<<10))
	if err := dec.Decode(&spec); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "malformed rollout request: "+err.Error())
	}
	st, err := a.cfg.Rollouts.Start(spec)
	if err != nil {
		return rolloutError(err)
	}
	return c.JSON(http.StatusAccepted, st)
}

func (a *api) rolloutStatus(c echo.Context) error {
	st, ok := a.cfg.Rollouts.Status(c.Param("function"))
	if !ok {
		return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("no rollout of %q", c.Param("function")))
	}
	return c.JSON(http.StatusOK, st)
}

func (a *api) listRollouts(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"rollouts": a.cfg.Rollouts.List()})
}

func (a *api) abortRollout(c echo.Context) error {
	st, err := a.cfg.Rollouts.Abort(c.Param("function"))
	if err != nil {
		return rolloutError(err)
	}
	return c.JSON(http.StatusOK, st)
}

func (a *api) undoRollout(c echo.Context) error {
	st, err := a.cfg.Rollouts.Undo(c.Param("function"))
	if err != nil {
		return rolloutError(err)
	}
	return c.JSON(http.StatusOK, st)
}
