package router

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"
)

// StatusClientClosedRequest is the status logged and counted when the
// client went away before the answer (nginx's 499); nobody receives it.
const StatusClientClosedRequest = 499

// errClientGone is the cause of a request context cancelled because the
// client closed its connection.
var errClientGone = errors.New("client closed the request")

// StatusError lets a backend choose the HTTP status of its error.
type StatusError interface {
	error
	HTTPStatus() int
}

// httpErr is an error with the status the client gets.
type httpErr struct {
	code  int
	msg   string
	shed  bool   // deliberate overload shedding (X-Pilotlight-Shed)
	retry string // Retry-After value; "" gets "1" on 503 and 429
}

func (e *httpErr) Error() string   { return e.msg }
func (e *httpErr) HTTPStatus() int { return e.code }
func (e *httpErr) Shed() bool      { return e.shed }

// Errorf makes an error with the HTTP status the client gets (and the
// matching gRPC code): what a Backend returns for a failure it can name.
func Errorf(code int, format string, args ...any) error {
	return &httpErr{code: code, msg: fmt.Sprintf(format, args...)}
}

// Shed is Errorf for load shed on purpose (X-Pilotlight-Shed: overload).
func Shed(code int, format string, args ...any) error {
	return &httpErr{code: code, shed: true, msg: fmt.Sprintf(format, args...)}
}

// errorf makes an error with an HTTP status.
func errorf(code int, format string, args ...any) error {
	return &httpErr{code: code, msg: fmt.Sprintf(format, args...)}
}

// answer is what the client gets for an error: the one mapping from errors
// to statuses for the whole router (fast path, net/http path, echo routes).
type answer struct {
	code       int
	msg        string
	retryAfter string // "" for none
	shed       bool
	internal   bool // a 5xx the platform log should explain
}

// answerFor maps err to the client's answer. Errors carrying a status
// (StatusError, *echo.HTTPError) keep it; a context ended by the client
// is 499, by the request deadline 504; anything else is a 500 whose
// detail stays in the log.
func answerFor(err error) answer {
	a := answer{code: http.StatusInternalServerError, msg: err.Error()}
	var se StatusError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &se):
		a.code = se.HTTPStatus()
	case errors.As(err, &he):
		a.code = he.Code
		if m, ok := he.Message.(string); ok {
			a.msg = m
		} else {
			a.msg = http.StatusText(a.code)
		}
	case errors.Is(err, errClientGone), errors.Is(err, context.Canceled):
		a.code, a.msg = StatusClientClosedRequest, "client closed the request"
	case errors.Is(err, context.DeadlineExceeded):
		a.code = http.StatusGatewayTimeout
	default:
		a.internal = true
		a.msg = "internal error; the platform log has the details" // a panic's value is not the client's business
	}
	var shed interface{ Shed() bool }
	a.shed = errors.As(err, &shed) && shed.Shed()
	var he2 *httpErr
	if errors.As(err, &he2) && he2.retry != "" {
		a.retryAfter = he2.retry
	}
	if a.retryAfter == "" && (a.code == http.StatusServiceUnavailable || a.code == http.StatusTooManyRequests) {
		a.retryAfter = "1"
	}
	return a
}

// holdError names why acquiring an instance failed: the backend's own
// status, the client leaving (499), or the request timeout (504).
func (rt *Router) holdError(ctx context.Context, function, revision string, err error) error {
	var se StatusError
	switch {
	case errors.As(err, &se):
		return err
	case errors.Is(err, errClientGone), errors.Is(context.Cause(ctx), errClientGone):
		return errClientGone
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return errorf(http.StatusGatewayTimeout, "revision %s/%s: no instance became ready within the request timeout %s", function, revision, rt.cfg.RequestTimeout)
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		return errClientGone
	}
	return err
}
