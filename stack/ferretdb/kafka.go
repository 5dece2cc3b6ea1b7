package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

func kafkaClient(brokers string) (*kgo.Client, *kadm.Client, error) {
	seeds := strings.Split(brokers, ",")

	cl, err := kgo.NewClient(
		kgo.SeedBrokers(seeds...),
		kgo.DialTimeout(2*time.Second),
		kgo.RequestRetries(0),
		kgo.RetryTimeout(time.Second),
		kgo.MetadataMinAge(100*time.Millisecond),
	)
	if err != nil {
		return nil, nil, err
	}

	return cl, kadm.NewClient(cl), nil
}

// kafkaPing sends a Metadata request and succeeds when at least one broker is
// registered in the answer (in KRaft mode that means the controller quorum is up
// and the broker has joined it).
func kafkaPing(args []string) error {
	fs := flag.NewFlagSet("kafka-ping", flag.ExitOnError)
	brokers := fs.String("brokers", envOr("URNA_KAFKA_BROKERS", "127.0.0.1:9092"), "bootstrap brokers, comma separated")
	timeout := fs.Duration("timeout", 3*time.Second, "overall timeout")
	quiet := fs.Bool("q", false, "print nothing on success")
	_ = fs.Parse(args)

	cl, adm, err := kafkaClient(*brokers)
	if err != nil {
		return err
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	md, err := adm.Metadata(ctx)
	if err != nil {
		return err
	}

	if len(md.Brokers) == 0 {
		return errors.New("metadata answer lists no broker")
	}

	if md.Controller < 0 {
		return errors.New("metadata answer names no active controller")
	}

	if !*quiet {
		names := md.Topics.Names()
		sort.Strings(names)

		fmt.Printf("kafka ok: cluster %s, %d broker(s), controller %d, topics %v\n",
			md.Cluster, len(md.Brokers), md.Controller, names)
	}

	return nil
}

// kafkaTopics creates the given topics if missing; an existing topic with fewer
// partitions than asked is grown (Kafka cannot shrink a topic; more is left alone).
func kafkaTopics(args []string) error {
	fs := flag.NewFlagSet("kafka-topics", flag.ExitOnError)
	brokers := fs.String("brokers", envOr("URNA_KAFKA_BROKERS", "127.0.0.1:9092"), "bootstrap brokers, comma separated")
	timeout := fs.Duration("timeout", 30*time.Second, "overall timeout")
	rf := fs.Int("replication-factor", 1, "replication factor of new topics")

	var topics listFlag

	fs.Var(&topics, "topic", "NAME:PARTITIONS (repeatable)")
	_ = fs.Parse(args)

	if len(topics) == 0 {
		return errors.New("no -topic given")
	}

	cl, adm, err := kafkaClient(*brokers)
	if err != nil {
		return err
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	for _, t := range topics {
		name, p, ok := strings.Cut(t, ":")
		if !ok || name == "" {
			return fmt.Errorf("bad -topic %q, want NAME:PARTITIONS", t)
		}

		parts, err := strconv.Atoi(p)
		if err != nil || parts < 1 {
			return fmt.Errorf("bad partition count in %q", t)
		}

		if err = ensureTopic(ctx, adm, name, int32(parts), int16(*rf)); err != nil {
			return fmt.Errorf("topic %s: %w", name, err)
		}
	}

	return nil
}

func ensureTopic(ctx context.Context, adm *kadm.Client, name string, parts int32, rf int16) error {
	created := false

	for {
		res, err := adm.CreateTopic(ctx, parts, rf, nil, name)
		if err == nil {
			err = res.Err
		}

		if err == nil {
			created = true
			break
		}

		if errors.Is(err, kerr.TopicAlreadyExists) {
			break
		}

		var ke *kerr.Error
		if errors.As(err, &ke) && !ke.Retriable {
			return err
		}

		// broker still starting (or connection refused): retry until the deadline
		if err = pause(ctx, err); err != nil {
			return err
		}
	}

	// a new topic takes a moment to reach the broker's metadata cache: wait until
	// every partition has a leader, so that "created" means "producible"
	td, err := waitTopic(ctx, adm, name)
	if err != nil {
		return err
	}

	have := int32(len(td.Partitions))

	switch {
	case created:
		fmt.Printf("created topic %s (%d partitions)\n", name, have)
		return nil
	case have >= parts:
		fmt.Printf("topic %s exists (%d partitions)\n", name, have)
		return nil
	}

	resps, err := adm.UpdatePartitions(ctx, int(parts), name)
	if err != nil {
		return err
	}

	if err = resps.Error(); err != nil {
		return err
	}

	if _, err = waitTopic(ctx, adm, name); err != nil {
		return err
	}

	fmt.Printf("topic %s grown from %d to %d partitions\n", name, have, parts)

	return nil
}

func waitTopic(ctx context.Context, adm *kadm.Client, name string) (kadm.TopicDetail, error) {
	for {
		details, err := adm.ListTopics(ctx, name)
		if err == nil {
			td, ok := details[name]

			switch {
			case !ok:
				err = kerr.UnknownTopicOrPartition
			case td.Err != nil:
				err = td.Err
			case len(td.Partitions) == 0:
				err = errors.New("no partitions yet")
			default:
				for _, p := range td.Partitions {
					if p.Err != nil || p.Leader < 0 {
						err = fmt.Errorf("partition %d has no leader yet", p.Partition)
						break
					}
				}
			}

			if err == nil {
				return td, nil
			}
		}

		if err = pause(ctx, err); err != nil {
			return kadm.TopicDetail{}, err
		}
	}
}

// pause waits a little before a retry, or returns the last error once ctx is done.
func pause(ctx context.Context, last error) error {
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
	case <-time.After(200 * time.Millisecond):
		return nil
	}
}
