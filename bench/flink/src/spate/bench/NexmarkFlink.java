package spate.bench;

import java.io.BufferedWriter;
import java.io.OutputStreamWriter;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.atomic.LongAdder;
import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.Schema;
import org.apache.flink.table.api.Table;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;

/**
 * The Flink peer of `spate bench nexmark`: NEXMark queries as Flink SQL (after
 * nexmark-flink's queries) in a local StreamTableEnvironment, over events from
 * {@link NexmarkGen} (a port of Spate's generator).
 *
 * <pre>
 *   run --query qN --events N [--workers W] [--tps T] [--seed S]
 *   generate --events N [--seed S] [--tps T] [--offset O] [--out-of-order-group G]
 *   queries
 * </pre>
 */
public final class NexmarkFlink {
    static final long BASE_TIME_MS = 1_436_918_400_000L;

    static final Map<String, String> QUERIES = new LinkedHashMap<>();

    static {
        QUERIES.put("q0", "SELECT auction, bidder, price, dateTime, extra FROM bid");
        QUERIES.put("q1", "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid");
        QUERIES.put("q2", "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0");
        QUERIES.put("q3",
            "SELECT P.name, P.city, P.state, A.id FROM auction AS A INNER JOIN person AS P"
            + " ON A.seller = P.id WHERE A.category = 10"
            + " AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')");
        QUERIES.put("q4",
            "SELECT Q.category, AVG(Q.final) AS avg_price FROM ("
            + " SELECT MAX(B.price) AS final, A.category FROM auction A, bid B"
            + " WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires"
            + " GROUP BY A.id, A.category) Q GROUP BY Q.category");
        String hop = "TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))";
        QUERIES.put("q5",
            "SELECT AuctionBids.starttime, AuctionBids.endtime, AuctionBids.auction, AuctionBids.num FROM ("
            + " SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime"
            + " FROM " + hop + " GROUP BY auction, window_start, window_end) AS AuctionBids"
            + " JOIN ("
            + " SELECT MAX(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM ("
            + "  SELECT COUNT(*) AS num, window_start AS starttime, window_end AS endtime"
            + "  FROM " + hop + " GROUP BY auction, window_start, window_end) AS CountBids"
            + " GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids"
            + " ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime"
            + " AND AuctionBids.num >= MaxBids.maxn");
        QUERIES.put("q7",
            "SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra FROM bid B JOIN ("
            + " SELECT MAX(price) AS maxprice, window_end AS dateTime"
            + " FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))"
            + " GROUP BY window_start, window_end) B1 ON B.price = B1.maxprice"
            + " WHERE B.dateTime BETWEEN B1.dateTime - INTERVAL '10' SECOND AND B1.dateTime");
        QUERIES.put("q8",
            "SELECT P.id, P.name, P.starttime FROM ("
            + " SELECT id, name, window_start AS starttime, window_end AS endtime"
            + " FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))"
            + " GROUP BY id, name, window_start, window_end) P JOIN ("
            + " SELECT seller, window_start AS starttime, window_end AS endtime"
            + " FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))"
            + " GROUP BY seller, window_start, window_end) A"
            + " ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime");
        QUERIES.put("q9",
            "SELECT id, itemName, description, initialBid, reserve, dateTime, expires, seller, category, extra,"
            + " auction, bidder, price, bid_dateTime, bid_extra FROM ("
            + " SELECT A.*, B.auction, B.bidder, B.price, B.dateTime AS bid_dateTime, B.extra AS bid_extra,"
            + " ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.dateTime ASC) AS rownum"
            + " FROM auction A, bid B WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires)"
            + " WHERE rownum <= 1");
        QUERIES.put("q10",
            "SELECT auction, bidder, price, dateTime, extra, DATE_FORMAT(dateTime, 'yyyy-MM-dd') AS dt,"
            + " DATE_FORMAT(dateTime, 'HH:mm') AS hm FROM bid");
        QUERIES.put("q11",
            "SELECT bidder, COUNT(*) AS bid_count, window_start AS starttime, window_end AS endtime"
            + " FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))"
            + " GROUP BY bidder, window_start, window_end");
        QUERIES.put("q14",
            "SELECT auction, bidder, 0.908 * price AS price, CASE"
            + " WHEN HOUR(dateTime) >= 8 AND HOUR(dateTime) <= 18 THEN 'dayTime'"
            + " WHEN HOUR(dateTime) <= 6 OR HOUR(dateTime) >= 20 THEN 'nightTime'"
            + " ELSE 'otherTime' END AS bidTimeType, dateTime, extra, count_char(extra, 'c') AS c_counts"
            + " FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000");
        String counts =
            " COUNT(*) AS total_bids,"
            + " COUNT(*) FILTER (WHERE price < 10000) AS rank1_bids,"
            + " COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,"
            + " COUNT(*) FILTER (WHERE price >= 1000000) AS rank3_bids,"
            + " COUNT(DISTINCT bidder) AS total_bidders,"
            + " COUNT(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,"
            + " COUNT(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,"
            + " COUNT(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,"
            + " COUNT(DISTINCT auction) AS total_auctions,"
            + " COUNT(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,"
            + " COUNT(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,"
            + " COUNT(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions";
        QUERIES.put("q15",
            "SELECT DATE_FORMAT(dateTime, 'yyyy-MM-dd') AS `day`," + counts
            + " FROM bid GROUP BY DATE_FORMAT(dateTime, 'yyyy-MM-dd')");
        QUERIES.put("q16",
            "SELECT channel, DATE_FORMAT(dateTime, 'yyyy-MM-dd') AS `day`,"
            + " MAX(DATE_FORMAT(dateTime, 'HH:mm')) AS `minute`," + counts
            + " FROM bid GROUP BY channel, DATE_FORMAT(dateTime, 'yyyy-MM-dd')");
        QUERIES.put("q17",
            "SELECT auction, DATE_FORMAT(dateTime, 'yyyy-MM-dd') AS `day`, COUNT(*) AS total_bids,"
            + " COUNT(*) FILTER (WHERE price < 10000) AS rank1_bids,"
            + " COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,"
            + " COUNT(*) FILTER (WHERE price >= 1000000) AS rank3_bids,"
            + " MIN(price) AS min_price, MAX(price) AS max_price, AVG(price) AS avg_price, SUM(price) AS sum_price"
            + " FROM bid GROUP BY auction, DATE_FORMAT(dateTime, 'yyyy-MM-dd')");
        QUERIES.put("q18",
            "SELECT auction, bidder, price, channel, url, dateTime, extra FROM ("
            + " SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY dateTime DESC) AS rank_number"
            + " FROM bid) WHERE rank_number <= 1");
        QUERIES.put("q19",
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number"
            + " FROM bid) WHERE rank_number <= 10");
        QUERIES.put("q20",
            "SELECT auction, bidder, price, channel, url, B.dateTime, B.extra, itemName, description,"
            + " initialBid, reserve, A.dateTime AS a_dateTime, expires, seller, category, A.extra AS a_extra"
            + " FROM bid AS B INNER JOIN auction AS A ON B.auction = A.id WHERE A.category = 10");
        String chid = "REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2)";
        QUERIES.put("q21",
            "SELECT auction, bidder, price, channel, CASE"
            + " WHEN LOWER(channel) = 'apple' THEN '0' WHEN LOWER(channel) = 'google' THEN '1'"
            + " WHEN LOWER(channel) = 'facebook' THEN '2' WHEN LOWER(channel) = 'baidu' THEN '3'"
            + " ELSE " + chid + " END AS channel_id FROM bid"
            + " WHERE " + chid + " IS NOT NULL OR LOWER(channel) IN ('apple', 'google', 'facebook', 'baidu')");
        QUERIES.put("q22",
            "SELECT auction, bidder, price, channel, SPLIT_INDEX(url, '/', 3) AS dir1,"
            + " SPLIT_INDEX(url, '/', 4) AS dir2, SPLIT_INDEX(url, '/', 5) AS dir3 FROM bid");
    }

    /** q14's UDF: how many times `c` occurs in `s`. */
    public static class CountChar extends ScalarFunction {
        public long eval(String s, String c) {
            if (s == null || c == null || c.isEmpty()) return 0;
            char ch = c.charAt(0);
            long n = 0;
            for (int i = 0; i < s.length(); i++) if (s.charAt(i) == ch) n++;
            return n;
        }
    }

    // The job runs in this JVM (a local MiniCluster): the sink counts here.
    static final LongAdder INSERTS = new LongAdder(), UPDATE_BEFORE = new LongAdder(),
        UPDATE_AFTER = new LongAdder(), DELETES = new LongAdder();

    /** Counts the rows of a changelog by kind and drops them. */
    static final class CountingSink implements Sink<Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public SinkWriter<Row> createWriter(WriterInitContext context) {
            return new SinkWriter<Row>() {
                long i, ub, ua, d;

                @Override
                public void write(Row r, Context c) {
                    RowKind k = r.getKind();
                    if (k == RowKind.INSERT) i++;
                    else if (k == RowKind.UPDATE_AFTER) ua++;
                    else if (k == RowKind.UPDATE_BEFORE) ub++;
                    else d++;
                }

                @Override
                public void flush(boolean endOfInput) {}

                @Override
                public void close() {
                    INSERTS.add(i);
                    UPDATE_BEFORE.add(ub);
                    UPDATE_AFTER.add(ua);
                    DELETES.add(d);
                }
            };
        }
    }

    /** Event n of the generator, made on the task (its strings built once). */
    static final class MakeEvent implements MapFunction<Long, Row> {
        private static final long serialVersionUID = 1L;
        private final NexmarkGen gen;

        MakeEvent(NexmarkGen gen) { this.gen = gen; }

        @Override
        public Row map(Long n) { return gen.init().event(n); }
    }

    /** utime + stime of this process, seconds (/proc/self/stat). */
    static double cpuSeconds() {
        try {
            String s = new String(Files.readAllBytes(Paths.get("/proc/self/stat")));
            String[] f = s.substring(s.lastIndexOf(')') + 2).split(" ");
            // Fields 14 and 15 of stat; f[0] is field 3.
            long ticks = Long.parseLong(f[11]) + Long.parseLong(f[12]);
            return ticks / (double) CLK_TCK;
        } catch (Exception e) {
            return 0;
        }
    }

    static long CLK_TCK = 100;

    /** `dateTime` is a keyword of Flink SQL: quote it. */
    static String quote(String sql) {
        return sql.replaceAll("\\bdateTime\\b", "`dateTime`");
    }

    static Map<String, String> args(String[] a, int from) {
        Map<String, String> m = new HashMap<>();
        for (int i = from; i < a.length; i++) {
            if (!a[i].startsWith("--") || i + 1 >= a.length) throw new IllegalArgumentException("bad argument " + a[i]);
            m.put(a[i].substring(2), a[++i]);
        }
        return m;
    }

    static long num(Map<String, String> m, String k, long dflt) {
        return m.containsKey(k) ? Long.parseLong(m.get(k)) : dflt;
    }

    public static void main(String[] argv) throws Exception {
        if (argv.length == 0) {
            System.err.println("usage: run --query qN --events N [--workers W] [--tps T] [--seed S]"
                + " | generate --events N [--seed S] [--tps T] [--offset O] [--out-of-order-group G] | queries");
            System.exit(2);
        }
        if (System.getenv("CLK_TCK") != null) CLK_TCK = Long.parseLong(System.getenv("CLK_TCK"));
        switch (argv[0]) {
            case "queries":
                System.out.println(String.join(",", QUERIES.keySet()));
                return;
            case "generate": {
                Map<String, String> a = args(argv, 1);
                NexmarkGen g = new NexmarkGen(num(a, "seed", 0), num(a, "tps", 10_000_000), BASE_TIME_MS,
                    num(a, "out-of-order-group", 1)).init();
                long offset = num(a, "offset", 0), n = num(a, "events", 0);
                BufferedWriter w = new BufferedWriter(new OutputStreamWriter(System.out), 1 << 20);
                StringBuilder line = new StringBuilder(1024);
                for (long i = offset; i < offset + n; i++) {
                    line.setLength(0);
                    NexmarkGen.writeJson(g.event(i), line);
                    line.append('\n');
                    w.append(line);
                }
                w.flush();
                return;
            }
            case "run":
                run(args(argv, 1));
                return;
            default:
                throw new IllegalArgumentException("unknown command " + argv[0]);
        }
    }

    static void run(Map<String, String> a) throws Exception {
        String q = a.getOrDefault("query", "q0").replaceFirst("^nexmark-", "");
        String sql = QUERIES.get(q);
        if (sql == null) throw new IllegalArgumentException("no Flink query " + q + "; have " + QUERIES.keySet());
        long events = num(a, "events", 10_000_000), tps = num(a, "tps", 10_000_000), seed = num(a, "seed", 0);
        int workers = (int) num(a, "workers", 1);

        Configuration conf = new Configuration();
        conf.set(TaskManagerOptions.NUM_TASK_SLOTS, workers);
        conf.setString("pipeline.object-reuse", "true");
        conf.setString("table.local-time-zone", "UTC");
        conf.setString("rest.bind-port", "0");
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(workers, conf);
        StreamTableEnvironment tEnv = StreamTableEnvironment.create(env);
        tEnv.getConfig().set("table.local-time-zone", "UTC");
        tEnv.createTemporarySystemFunction("count_char", CountChar.class);

        TypeInformation<?>[] types = new TypeInformation<?>[NexmarkGen.FIELDS.length];
        for (int i = 0; i < types.length; i++) {
            String f = NexmarkGen.FIELDS[i];
            boolean text = f.endsWith("name") || f.endsWith("Name") || f.endsWith("emailAddress")
                || f.endsWith("creditCard") || f.endsWith("city") || f.endsWith("state") || f.endsWith("extra")
                || f.endsWith("description") || f.endsWith("channel") || f.endsWith("url");
            types[i] = i == 0 ? Types.INT : text ? Types.STRING : Types.LONG;
        }
        NexmarkGen gen = new NexmarkGen(seed, tps, BASE_TIME_MS, 1);
        DataStream<Row> source = env.fromSequence(0, events - 1).name("nexmark-events")
            .map(new MakeEvent(gen)).returns(new RowTypeInfo(types, NexmarkGen.FIELDS)).name("generator");
        Table t = tEnv.fromDataStream(source, Schema.newBuilder()
            .columnByExpression("dateTime", "TO_TIMESTAMP_LTZ(ts, 3)")
            .watermark("dateTime", quote("dateTime - INTERVAL '4' SECOND"))
            .build());
        tEnv.createTemporaryView("nexmark", t);
        tEnv.executeSql(quote("CREATE TEMPORARY VIEW person AS SELECT p_id AS id, p_name AS name,"
            + " p_emailAddress AS emailAddress, p_creditCard AS creditCard, p_city AS city, p_state AS state,"
            + " dateTime, p_extra AS extra FROM nexmark WHERE event_type = 0"));
        tEnv.executeSql(quote("CREATE TEMPORARY VIEW auction AS SELECT a_id AS id, a_itemName AS itemName,"
            + " a_description AS description, a_initialBid AS initialBid, a_reserve AS reserve, dateTime,"
            + " TO_TIMESTAMP_LTZ(a_expires, 3) AS expires, a_seller AS seller, a_category AS category,"
            + " a_extra AS extra FROM nexmark WHERE event_type = 1"));
        tEnv.executeSql(quote("CREATE TEMPORARY VIEW bid AS SELECT b_auction AS auction, b_bidder AS bidder,"
            + " b_price AS price, b_channel AS channel, b_url AS url, dateTime, b_extra AS extra"
            + " FROM nexmark WHERE event_type = 2"));

        Table result = tEnv.sqlQuery(quote(sql));
        tEnv.toChangelogStream(result).sinkTo(new CountingSink()).name("count");
        if (a.containsKey("explain")) System.err.println(result.explain());

        // The local MiniCluster starts inside executeAsync (seconds of CPU
        // that are no part of the job): time and CPU count from the job's
        // RUNNING state to its result.
        long start = System.nanoTime();
        JobClient client = env.executeAsync("nexmark-" + q);
        while (client.getJobStatus().get() != JobStatus.RUNNING && !client.getJobStatus().get().isTerminalState()) {
            Thread.sleep(5);
        }
        double cpu0 = cpuSeconds();
        long t0 = System.nanoTime();
        JobExecutionResult r = client.getJobExecutionResult().get();
        double seconds = (System.nanoTime() - t0) / 1e9;
        double cpu = cpuSeconds() - cpu0;
        double total = (System.nanoTime() - start) / 1e9;
        long ins = INSERTS.sum(), ub = UPDATE_BEFORE.sum(), ua = UPDATE_AFTER.sum(), del = DELETES.sum();
        System.out.println(String.format(java.util.Locale.ROOT,
            "{\"system\":\"flink\",\"query\":\"%s\",\"events\":%d,\"tps\":%d,\"workers\":%d,\"results\":%d,"
            + "\"final_rows\":%d,\"inserts\":%d,\"update_before\":%d,\"update_after\":%d,\"deletes\":%d,"
            + "\"seconds\":%.6f,\"job_seconds\":%.6f,\"submit_to_result_seconds\":%.6f,\"cpu_seconds\":%.6f,\"events_per_s\":%.1f,\"events_per_cpu_s\":%.1f}",
            q, events, tps, workers, ins + ua, ins - del, ins, ub, ua, del, seconds,
            r.getNetRuntime() / 1000.0, total, cpu, events / Math.max(seconds, 1e-9), events / Math.max(cpu, 1e-9)));
    }
}
