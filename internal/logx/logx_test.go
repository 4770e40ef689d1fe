package logx

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestRedactDSN(t *testing.T) {
	cases := map[string]string{
		"postgres://bob:s3cret@db:5432/app":           "postgres://bob:xxxxx@db:5432/app",
		"postgres://bob@db/app?password=s3cret":       "postgres://bob@db/app?password=xxxxx",
		"host=db user=bob password=s3cret dbname=app": "host=db user=bob password=xxxxx dbname=app",
		"host=db password='s3 cret' dbname=app":       "host=db password=xxxxx dbname=app",
		"postgres://bob@db/app":                       "postgres://bob@db/app",
	}
	for in, want := range cases {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactMessage(t *testing.T) {
	msg := Redact(`failed to connect to user=bob password=s3cret: refused (s3cret)`, "postgres://bob:s3cret@db/app")
	if strings.Contains(msg, "s3cret") {
		t.Fatalf("password left in %q", msg)
	}
}

func TestNewJSONWhenNotTerminal(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "auto", "info")
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Str("k", "v").Msg("hello")
	log.Debug().Msg("hidden")
	out := buf.String()
	if !strings.HasPrefix(out, "{") || !strings.Contains(out, `"k":"v"`) || strings.Contains(out, "hidden") {
		t.Fatalf("output %q", out)
	}
	buf.Reset()
	log, _ = New(&buf, "console", "debug")
	log.Debug().Msg("shown")
	if strings.HasPrefix(buf.String(), "{") || !strings.Contains(buf.String(), "shown") {
		t.Fatalf("console output %q", buf.String())
	}
}

func TestMs(t *testing.T) {
	for d, want := range map[time.Duration]float64{
		10563462 * time.Nanosecond: 10.6,
		0:                          0,
		2 * time.Second:            2000,
		49 * time.Microsecond:      0,
	} {
		if got := Ms(d); got != want {
			t.Errorf("Ms(%s) = %v, want %v", d, got, want)
		}
	}
}
