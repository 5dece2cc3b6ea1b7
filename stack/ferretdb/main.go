// Command urna-ferretdb is the local stack's MongoDB-wire server and its probes.
//
// It embeds FerretDB 1.x (package github.com/FerretDB/FerretDB/ferretdb) with the
// SQLite backend, so the stack has a MongoDB endpoint without mongod. The plain
// `cmd/ferretdb` binary cannot be `go install`ed from the module proxy (its version
// check needs generated files), the embeddable package can.
//
// The same binary carries the stack's fast readiness probes, so that polling does
// not start a JVM or a Python interpreter every half second:
//
//	urna-ferretdb serve        -listen 127.0.0.1:27017 -dir .stack/data/ferretdb
//	urna-ferretdb ping         -url mongodb://127.0.0.1:27017/     (MongoDB `ping` command, official Go driver)
//	urna-ferretdb kafka-ping   -brokers 127.0.0.1:9092              (Kafka Metadata request, franz-go)
//	urna-ferretdb kafka-topics -brokers 127.0.0.1:9092 -topic votes:6 -topic votes.dlq:1
//
// Every probe exits 0 when the service answered and 1 otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

func usage() {
	fmt.Fprintf(os.Stderr, `usage: %s <command> [flags]

commands:
  serve         run FerretDB (SQLite backend) until SIGTERM/SIGINT
  ping          send the MongoDB "ping" command; exit 0 if it answers ok
  kafka-ping    send a Kafka Metadata request; exit 0 if a broker answers
  kafka-topics  create topics idempotently (NAME:PARTITIONS, repeatable)

run "%s <command> -h" for the flags of a command
`, os.Args[0], os.Args[0])
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}

	cmd, args := os.Args[1], os.Args[2:]

	var err error

	switch cmd {
	case "serve":
		err = serve(args)
	case "ping":
		err = ping(args)
	case "kafka-ping":
		err = kafkaPing(args)
	case "kafka-topics":
		err = kafkaTopics(args)
	case "-h", "-help", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}

	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", cmd, err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", envOr("URNA_FERRETDB_LISTEN", "127.0.0.1:27017"), "TCP listen address")
	dir := fs.String("dir", envOr("URNA_FERRETDB_DIR", "data/ferretdb"), "SQLite data directory")
	level := fs.String("log-level", envOr("URNA_FERRETDB_LOG_LEVEL", "warn"), "debug, info, warn or error")
	// SQLite's synchronous setting, with its WAL journal: FULL syncs the disk on every
	// commit (each MongoDB write here); NORMAL only at checkpoints: a killed server loses
	// nothing, a power cut may lose the last commits. See stack/README.md.
	sync := fs.String("sqlite-synchronous", envOr("URNA_FERRETDB_SQLITE_SYNCHRONOUS", "normal"), "SQLite synchronous: full or normal")
	_ = fs.Parse(args)

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("bad -log-level %q: %w", *level, err)
	}

	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: lvl}))

	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}

	if err = os.MkdirAll(abs, 0o755); err != nil {
		return err
	}

	if *sync != "full" && *sync != "normal" {
		return fmt.Errorf("bad -sqlite-synchronous %q: full or normal", *sync)
	}

	f, err := ferretdb.New(&ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: *listen},
		Logger:   logger,
		Handler:  "sqlite",
		// the SQLite handler wants a directory URI ending with a slash
		SQLiteURL: "file:" + abs + "/?_pragma=synchronous(" + *sync + ")",
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// these two lines are printed whatever the log level
	fmt.Printf("urna-ferretdb starting: listen=%s dir=%s log-level=%s\n", *listen, abs, lvl)

	go func() {
		// MongoDBURI blocks until the listener is bound, so this line means "listening"
		fmt.Printf("urna-ferretdb listening: %s\n", f.MongoDBURI())
	}()

	return f.Run(ctx)
}

func ping(args []string) error {
	fs := flag.NewFlagSet("ping", flag.ExitOnError)
	url := fs.String("url", envOr("URNA_MONGO_URL", "mongodb://127.0.0.1:27017/"), "MongoDB URL")
	timeout := fs.Duration("timeout", 3*time.Second, "overall timeout")
	quiet := fs.Bool("q", false, "print nothing on success")
	_ = fs.Parse(args)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	opts := options.Client().ApplyURI(*url).
		SetServerSelectionTimeout(*timeout).
		SetConnectTimeout(*timeout)

	client, err := mongo.Connect(ctx, opts)
	if err != nil {
		return err
	}

	// no Disconnect: it would send endSessions, which FerretDB 1.x does not know
	// and logs as a warning on every probe; the process exits right after anyway

	var res bson.M
	if err = client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Decode(&res); err != nil {
		return err
	}

	if ok, _ := res["ok"].(float64); ok != 1 {
		return fmt.Errorf("ping answered %v", res)
	}

	if !*quiet {
		var build bson.M
		_ = client.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&build)
		fmt.Printf("mongo ok: %s (version %v)\n", *url, build["version"])
	}

	return nil
}

func envOr(key, def string) string {
	if v := strings.TrimSpace(os.Getenv(key)); v != "" {
		return v
	}

	return def
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	if s == "" {
		return errors.New("empty value")
	}

	*l = append(*l, s)

	return nil
}
