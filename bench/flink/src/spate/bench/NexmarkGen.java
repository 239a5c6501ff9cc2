package spate.bench;

import java.io.Serializable;
import org.apache.flink.types.Row;

/**
 * A port of Spate's NEXMark generator (src/nexmark/generator.rs): event n is
 * a pure function of the seed and n, so the same seed, TPS and base time give
 * the same events, field for field, as `spate nexmark generate`.
 *
 * <p>Events are flat rows (see {@link #FIELDS}): event_type, dateTime (epoch
 * ms), then the person's, the auction's and the bid's fields, null where the
 * event is of another kind.
 */
public final class NexmarkGen implements Serializable {
    private static final long serialVersionUID = 1L;

    public static final String[] FIELDS = {
        "event_type", "ts",
        "p_id", "p_name", "p_emailAddress", "p_creditCard", "p_city", "p_state", "p_extra",
        "a_id", "a_itemName", "a_description", "a_initialBid", "a_reserve", "a_expires",
        "a_seller", "a_category", "a_extra",
        "b_auction", "b_bidder", "b_price", "b_channel", "b_url", "b_extra",
    };

    static final long FIRST_PERSON_ID = 1000, FIRST_AUCTION_ID = 1000, FIRST_CATEGORY_ID = 10;
    static final long PERSON_ID_LEAD = 10, AUCTION_ID_LEAD = 10;
    static final long HOT_SELLER_RATIO = 100, HOT_AUCTION_RATIO = 100, HOT_BIDDER_RATIO = 100;
    static final int NUM_CATEGORIES = 5, HOT_CHANNELS_RATIO = 2, CHANNELS_NUMBER = 10_000;
    static final String[] HOT_CHANNELS = {"Google", "Facebook", "Baidu", "Apple"};
    static final String[] US_STATES = {"AZ", "CA", "ID", "OR", "WA", "WY"};
    static final String[] US_CITIES = {
        "Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond",
        "Seattle", "Kent", "Cheyenne"};
    static final String[] FIRST_NAMES = {
        "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter",
        "Walter"};
    static final String[] LAST_NAMES = {
        "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"};
    static final int EXTRA_POOL_BYTES = 1 << 16;

    // GeneratorConfig, with Spate's defaults.
    final long seed, tps, baseTimeMs, outOfOrderGroup;
    final long personProportion = 1, auctionProportion = 3, bidProportion = 46;
    final int avgPersonBytes = 200, avgAuctionBytes = 500, avgBidBytes = 100;
    final int hotAuctionRatio = 2, hotSellersRatio = 4, hotBiddersRatio = 4;
    final long numInFlightAuctions = 100, numActivePeople = 1000;

    private transient String pool;
    private transient String[] hotUrls;
    private transient String[] channelNames, channelUrls;

    public NexmarkGen(long seed, long tps, long baseTimeMs, long outOfOrderGroup) {
        this.seed = seed;
        this.tps = Math.max(tps, 1);
        this.baseTimeMs = baseTimeMs;
        this.outOfOrderGroup = Math.max(outOfOrderGroup, 1);
    }

    long total() { return personProportion + auctionProportion + bidProportion; }

    long adjusted(long n) {
        long g = outOfOrderGroup;
        if (g == 1) return n;
        long base = n / g * g;
        return base + Long.remainderUnsigned((n % g) * 953, g);
    }

    long timestamp(long n) { return baseTimeMs + n * 1000 / tps; }

    long lastBase0PersonId(long eventId) {
        long epoch = eventId / total(), offset = eventId % total();
        if (offset >= personProportion) offset = personProportion - 1;
        return epoch * personProportion + offset;
    }

    long lastBase0AuctionId(long eventId) {
        long epoch = eventId / total(), offset = eventId % total();
        if (offset < personProportion) {
            if (epoch == 0) return 0;
            epoch -= 1;
            offset = auctionProportion - 1;
        } else if (offset >= personProportion + auctionProportion) {
            offset = auctionProportion - 1;
        } else {
            offset -= personProportion;
        }
        return epoch * auctionProportion + offset;
    }

    public static long splitmix64(long x) {
        x += 0x9E3779B97F4A7C15L;
        x = (x ^ (x >>> 30)) * 0xBF58476D1CE4E5B9L;
        x = (x ^ (x >>> 27)) * 0x94D049BB133111EBL;
        return x ^ (x >>> 31);
    }

    /** wyrand, as Spate's Rng. */
    static final class Rng {
        long s;
        Rng(long s) { this.s = s; }

        long nextU64() {
            s += 0xa0761d6478bd642fL;
            long a = s, b = s ^ 0xe7037ed1a0b428dbL;
            long lo = a * b;
            long hi = Math.multiplyHigh(a, b) + ((a >> 63) & b) + ((b >> 63) & a);
            return hi ^ lo;
        }

        /** Uniform in 0..n, n an unsigned 32-bit value. */
        int nextInt(long n) {
            return (int) (((nextU64() >>> 32) * n) >>> 32);
        }

        long nextLong(long n) {
            if (n > 0 && n <= 0xFFFFFFFFL) return nextInt(n) & 0xFFFFFFFFL;
            return Long.remainderUnsigned(nextU64(), Math.max(n, 1));
        }

        double nextDouble() { return (nextU64() >>> 11) * (1.0 / (double) (1L << 53)); }

        long price() { return Math.round(Math.pow(10.0, nextDouble() * 6.0) * 100.0); }

        void string(int maxLen, char special, StringBuilder out) {
            int len = 3 + nextInt(maxLen - 3);
            int start = out.length();
            for (int i = 0; i < len; i++) {
                char c = nextInt(13) == 0 ? special : (char) ('a' + nextInt(26));
                out.append(c);
            }
            String s = out.substring(start);
            out.setLength(start);
            out.append(s.trim());
        }
    }

    private String baseUrl(Rng r) {
        StringBuilder u = new StringBuilder("https://www.nexmark.com/");
        for (int i = 0; i < 3; i++) {
            r.string(5, '_', u);
            u.append('/');
        }
        u.append("item.htm?query=1");
        return u.toString();
    }

    /** Builds the strings events draw from (the Rust `new`). */
    public NexmarkGen init() {
        if (pool != null) return this;
        Rng r = new Rng(splitmix64(seed ^ 0x4e45584d41524b21L));
        char[] p = new char[EXTRA_POOL_BYTES];
        for (int i = 0; i < p.length; i++) p[i] = (char) ('a' + r.nextInt(26));
        pool = new String(p);
        hotUrls = new String[4];
        for (int i = 0; i < 4; i++) hotUrls[i] = baseUrl(r);
        channelNames = new String[CHANNELS_NUMBER];
        channelUrls = new String[CHANNELS_NUMBER];
        for (int i = 0; i < CHANNELS_NUMBER; i++) {
            String url = baseUrl(r);
            if (r.nextInt(10) > 0) url += "&channel_id=" + Math.abs(Integer.reverse(i));
            channelNames[i] = "channel-" + i;
            channelUrls[i] = url;
        }
        return this;
    }

    /** Event number n as a flat row. */
    public Row event(long n) {
        long adjusted = adjusted(n);
        long eventId = adjusted, ts = timestamp(adjusted);
        Rng r = new Rng(splitmix64(seed ^ splitmix64(eventId)));
        long rem = eventId % total();
        Row row = new Row(FIELDS.length);
        row.setField(1, ts);
        if (rem < personProportion) {
            row.setField(0, 0);
            person(row, eventId, ts, r);
        } else if (rem < personProportion + auctionProportion) {
            row.setField(0, 1);
            auction(row, adjusted, eventId, ts, r);
        } else {
            row.setField(0, 2);
            bid(row, eventId, ts, r);
        }
        return row;
    }

    private String extra(Rng r, int current, int desiredAverage) {
        if (current > desiredAverage) return "";
        int desired = desiredAverage - current;
        int delta = (int) Math.round(desired * 0.2);
        int size = desired - delta + (delta == 0 ? 0 : r.nextInt(2L * delta));
        int at = r.nextInt(pool.length() - size);
        return pool.substring(at, at + size);
    }

    private long nextBase0PersonId(long eventId, Rng r) {
        long people = lastBase0PersonId(eventId) + 1;
        long active = Math.min(people, numActivePeople);
        return people - active + r.nextLong(active + PERSON_ID_LEAD);
    }

    private long nextBase0AuctionId(long eventId, Rng r) {
        long max = lastBase0AuctionId(eventId);
        long min = Math.max(max - numInFlightAuctions, 0);
        return min + r.nextLong(max - min + 1 + AUCTION_ID_LEAD);
    }

    private void person(Row row, long eventId, long ts, Rng r) {
        long id = lastBase0PersonId(eventId) + FIRST_PERSON_ID;
        String name = FIRST_NAMES[r.nextInt(FIRST_NAMES.length)] + " "
                + LAST_NAMES[r.nextInt(LAST_NAMES.length)];
        StringBuilder email = new StringBuilder(16);
        r.string(7, ' ', email);
        email.append('@');
        r.string(5, ' ', email);
        email.append(".com");
        StringBuilder cc = new StringBuilder(19);
        for (int i = 0; i < 4; i++) {
            if (i > 0) cc.append(' ');
            int v = r.nextInt(10_000);
            for (int d : new int[] {1000, 100, 10, 1}) cc.append((char) ('0' + v / d % 10));
        }
        String city = US_CITIES[r.nextInt(US_CITIES.length)];
        String state = US_STATES[r.nextInt(US_STATES.length)];
        int size = 8 + name.length() + email.length() + cc.length() + city.length() + state.length();
        String extra = extra(r, size, avgPersonBytes);
        row.setField(2, id);
        row.setField(3, name);
        row.setField(4, email.toString());
        row.setField(5, cc.toString());
        row.setField(6, city);
        row.setField(7, state);
        row.setField(8, extra);
    }

    private void auction(Row row, long adjusted, long eventId, long ts, Rng r) {
        long id = lastBase0AuctionId(eventId) + FIRST_AUCTION_ID;
        long seller = (r.nextInt(hotSellersRatio) > 0
                ? lastBase0PersonId(eventId) / HOT_SELLER_RATIO * HOT_SELLER_RATIO
                : nextBase0PersonId(eventId, r)) + FIRST_PERSON_ID;
        long category = FIRST_CATEGORY_ID + r.nextInt(NUM_CATEGORIES);
        long initialBid = r.price();
        long eventsForAuctions = numInFlightAuctions * total() / auctionProportion;
        long horizon = Math.max(timestamp(adjusted + eventsForAuctions) - ts, 0);
        long expires = ts + 1 + r.nextLong(Math.max(horizon * 2, 1));
        StringBuilder itemName = new StringBuilder(20);
        r.string(20, ' ', itemName);
        StringBuilder description = new StringBuilder(100);
        r.string(100, ' ', description);
        long reserve = initialBid + r.price();
        int size = 8 + itemName.length() + description.length() + 40;
        String extra = extra(r, size, avgAuctionBytes);
        row.setField(9, id);
        row.setField(10, itemName.toString());
        row.setField(11, description.toString());
        row.setField(12, initialBid);
        row.setField(13, reserve);
        row.setField(14, expires);
        row.setField(15, seller);
        row.setField(16, category);
        row.setField(17, extra);
    }

    private void bid(Row row, long eventId, long ts, Rng r) {
        long auction = (r.nextInt(hotAuctionRatio) > 0
                ? lastBase0AuctionId(eventId) / HOT_AUCTION_RATIO * HOT_AUCTION_RATIO
                : nextBase0AuctionId(eventId, r)) + FIRST_AUCTION_ID;
        long bidder = (r.nextInt(hotBiddersRatio) > 0
                ? lastBase0PersonId(eventId) / HOT_BIDDER_RATIO * HOT_BIDDER_RATIO + 1
                : nextBase0PersonId(eventId, r)) + FIRST_PERSON_ID;
        long price = r.price();
        String channel, url;
        if (r.nextInt(HOT_CHANNELS_RATIO) > 0) {
            int i = r.nextInt(HOT_CHANNELS.length);
            channel = HOT_CHANNELS[i];
            url = hotUrls[i];
        } else {
            int i = r.nextInt(CHANNELS_NUMBER);
            channel = channelNames[i];
            url = channelUrls[i];
        }
        String extra = extra(r, 32, avgBidBytes);
        row.setField(18, auction);
        row.setField(19, bidder);
        row.setField(20, price);
        row.setField(21, channel);
        row.setField(22, url);
        row.setField(23, extra);
    }

    // ---- JSON lines, as `spate nexmark generate` writes them ----

    private static void str(StringBuilder o, String k, Object v) {
        o.append('"').append(k).append("\":\"");
        String s = (String) v;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': o.append("\\\""); break;
                case '\\': o.append("\\\\"); break;
                case '\n': o.append("\\n"); break;
                case '\r': o.append("\\r"); break;
                case '\t': o.append("\\t"); break;
                default:
                    if (c < ' ') o.append(String.format("\\u%04x", (int) c));
                    else o.append(c);
            }
        }
        o.append('"');
    }

    private static void num(StringBuilder o, String k, Object v) {
        o.append('"').append(k).append("\":").append(v);
    }

    public static void writeJson(Row e, StringBuilder o) {
        int type = (Integer) e.getField(0);
        o.append("{\"event_type\":").append(type).append(',');
        if (type == 0) {
            o.append("\"person\":{");
            num(o, "id", e.getField(2)); o.append(',');
            str(o, "name", e.getField(3)); o.append(',');
            str(o, "emailAddress", e.getField(4)); o.append(',');
            str(o, "creditCard", e.getField(5)); o.append(',');
            str(o, "city", e.getField(6)); o.append(',');
            str(o, "state", e.getField(7)); o.append(',');
            num(o, "dateTime", e.getField(1)); o.append(',');
            str(o, "extra", e.getField(8));
        } else if (type == 1) {
            o.append("\"auction\":{");
            num(o, "id", e.getField(9)); o.append(',');
            str(o, "itemName", e.getField(10)); o.append(',');
            str(o, "description", e.getField(11)); o.append(',');
            num(o, "initialBid", e.getField(12)); o.append(',');
            num(o, "reserve", e.getField(13)); o.append(',');
            num(o, "dateTime", e.getField(1)); o.append(',');
            num(o, "expires", e.getField(14)); o.append(',');
            num(o, "seller", e.getField(15)); o.append(',');
            num(o, "category", e.getField(16)); o.append(',');
            str(o, "extra", e.getField(17));
        } else {
            o.append("\"bid\":{");
            num(o, "auction", e.getField(18)); o.append(',');
            num(o, "bidder", e.getField(19)); o.append(',');
            num(o, "price", e.getField(20)); o.append(',');
            str(o, "channel", e.getField(21)); o.append(',');
            str(o, "url", e.getField(22)); o.append(',');
            num(o, "dateTime", e.getField(1)); o.append(',');
            str(o, "extra", e.getField(23));
        }
        o.append("}}");
    }
}
