// The Java client (kafka-clients) as a peer of ours, for tests/peers.rs. Run from source with
// the broker's jars on the classpath: `java -cp '.dev/kafka-4.4.0/libs/*' JavaClient.java MODE ...`
//
//   produce BOOTSTRAP TOPIC N    N records per codec (none, gzip, snappy, lz4, zstd), values
//                                "<codec>-<i>", keys "k-<i>", header "origin: java"; then a
//                                transaction of "aborted-1", "aborted-2" that is aborted and
//                                one of "committed" that is committed; prints DONE
//   member BOOTSTRAP TOPIC GROUP SECONDS [PROTOCOL]
//                                a consumer-group member (PROTOCOL "classic", the default, with
//                                the range and round-robin assignors; "cooperative", classic with
//                                cooperative-sticky, KIP-429; or "consumer", KIP-848);
//                                prints "ASSIGNED [p, ...]" with all it holds after each change
//                                and "MSG partition value" per record
//   read BOOTSTRAP TOPIC N       a read_committed consumer of every partition from the start,
//                                until N records; prints "REC partition key value timestamp
//                                headers murmur2-partition" per record, then DONE
import java.time.Duration;
import java.util.*;
import java.util.stream.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.common.utils.Utils;

public class JavaClient {
    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "produce" -> produce(args[1], args[2], Integer.parseInt(args[3]));
            case "member" -> member(args[1], args[2], args[3], Integer.parseInt(args[4]),
                args.length > 5 ? args[5] : "classic");
            case "read" -> read(args[1], args[2], Integer.parseInt(args[3]));
            default -> throw new IllegalArgumentException(args[0]);
        }
    }

    static Properties producerProps(String bootstrap) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        return p;
    }

    static void produce(String bootstrap, String topic, int n) throws Exception {
        for (String codec : List.of("none", "gzip", "snappy", "lz4", "zstd")) {
            Properties p = producerProps(bootstrap);
            p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
                for (int i = 0; i < n; i++) {
                    ProducerRecord<String, String> r =
                        new ProducerRecord<>(topic, "k-" + i, codec + "-" + i);
                    r.headers().add("origin", "java".getBytes());
                    producer.send(r);
                }
                producer.flush();
            }
        }
        Properties p = producerProps(bootstrap);
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "tests-" + UUID.randomUUID());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            producer.initTransactions();
            producer.beginTransaction();
            producer.send(new ProducerRecord<>(topic, "t", "aborted-1"));
            producer.send(new ProducerRecord<>(topic, "t", "aborted-2"));
            producer.flush();
            producer.abortTransaction();
            producer.beginTransaction();
            producer.send(new ProducerRecord<>(topic, "t", "committed"));
            producer.commitTransaction();
        }
        System.out.println("DONE");
    }

    static Properties consumerProps(String bootstrap) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        return p;
    }

    static void member(String bootstrap, String topic, String group, int seconds,
            String protocol) {
        Properties p = consumerProps(bootstrap);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        boolean consumerProtocol = protocol.equals("consumer");
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, consumerProtocol ? "consumer" : "classic");
        p.put(ConsumerConfig.AUTO_COMMIT_INTERVAL_MS_CONFIG, "200");
        if (!consumerProtocol) {
            // The consumer protocol takes these from the broker (setting them is an error).
            p.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "6000");
            p.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "300");
            p.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
                protocol.equals("cooperative")
                    ? "org.apache.kafka.clients.consumer.CooperativeStickyAssignor"
                    : "org.apache.kafka.clients.consumer.RangeAssignor,"
                        + "org.apache.kafka.clients.consumer.RoundRobinAssignor");
        }
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            consumer.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                public void onPartitionsRevoked(Collection<TopicPartition> parts) {}

                public void onPartitionsAssigned(Collection<TopicPartition> parts) {
                    // Incremental under the consumer protocol: print all that is held.
                    List<Integer> ids = consumer.assignment().stream()
                        .map(TopicPartition::partition).sorted()
                        .collect(Collectors.toList());
                    System.out.println("ASSIGNED " + ids);
                    System.out.flush();
                }
            });
            long end = System.currentTimeMillis() + seconds * 1000L;
            while (System.currentTimeMillis() < end) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    System.out.println("MSG " + r.partition() + " " + r.value());
                }
                System.out.flush();
            }
        }
        System.out.println("DONE");
    }

    static void read(String bootstrap, String topic, int n) {
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerProps(bootstrap))) {
            List<TopicPartition> parts = consumer.partitionsFor(topic).stream()
                .map(i -> new TopicPartition(topic, i.partition())).collect(Collectors.toList());
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            int seen = 0;
            long end = System.currentTimeMillis() + 60_000;
            while (seen < n && System.currentTimeMillis() < end) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    String headers = StreamSupport.stream(r.headers().spliterator(), false)
                        .map(h -> h.key() + "=" + new String(h.value()))
                        .collect(Collectors.joining(","));
                    String expected = r.key() == null ? "-"
                        : String.valueOf(Utils.toPositive(Utils.murmur2(r.key().getBytes())) % parts.size());
                    System.out.println("REC " + r.partition() + " " + r.key() + " " + r.value() + " "
                        + r.timestamp() + " " + headers + " " + expected);
                    seen++;
                }
            }
        }
        System.out.println("DONE");
    }
}
