use crate::envelope::{Envelope, Protocol};
use crate::host::Host;
use crate::rt::Rt;
use crate::{config, Map, TRACING_TARGET};

use rand::{Rng, RngCore};
use rand_distr::{Distribution, Exp};
use std::collections::VecDeque;
use std::io::{Error, ErrorKind, Result};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

/// Describes the network topology.
pub(crate) struct Topology {
    config: config::Link,

    /// Specific configuration overrides between specific hosts.
    links: Map<Pair, Link>,

    /// For each host, the indices in [`Topology::links`] of the links that
    /// touch it, ascending (registration order). Links are never removed, so
    /// the indices stay valid; delivery walks a host's own links instead of
    /// every link of the full mesh (`hosts - 1` instead of
    /// `hosts * (hosts - 1) / 2` per host and step).
    links_by_host: Map<IpAddr, Vec<usize>>,

    /// The network's clock. It used to be a runtime with no software,
    /// ticked (a `block_on`) every step only to move its paused clock by the
    /// tick; nothing ever ran on it, so a sum is the same clock (checked
    /// equal on every step of 40 seeds of a 14-host simulation before the
    /// runtime was removed).
    now: Instant,
}

/// This type is used as the key in the [`Topology::links`] map. See [`new`]
/// which orders the addrs, such that this type uniquely identifies the link
/// between two hosts on the network.
#[derive(Debug, Clone, Hash, Eq, PartialEq)]
struct Pair(IpAddr, IpAddr);

impl Pair {
    fn new(a: IpAddr, b: IpAddr) -> Pair {
        assert_ne!(a, b);

        if a < b {
            Pair(a, b)
        } else {
            Pair(b, a)
        }
    }
}

/// An iterator for the network topology, providing access to all active links
/// in the simulated network.
pub struct LinksIter<'a> {
    iter: indexmap::map::IterMut<'a, Pair, Link>,
}

/// An iterator for the link, providing access to sent messages that have not
/// yet been delivered.
pub struct LinkIter<'a> {
    a: IpAddr,
    b: IpAddr,
    now: Instant,
    iter: std::collections::vec_deque::IterMut<'a, Sent>,
}

impl LinkIter<'_> {
    /// The [`IpAddr`] pair for the link. Always ordered to uniquely identify
    /// the link.
    pub fn pair(&self) -> (IpAddr, IpAddr) {
        (self.a, self.b)
    }

    /// Schedule all messages on the link for delivery the next time the
    /// simulation steps, consuming the iterator.
    pub fn deliver_all(self) {
        for sent in self {
            sent.deliver();
        }
    }
}

/// Provides a reference to a message that is currently inflight on the network
/// from one host to another.
pub struct SentRef<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    now: Instant,
    sent: &'a mut Sent,
}

impl SentRef<'_> {
    /// The (src, dst) [`SocketAddr`] pair for the message.
    pub fn pair(&self) -> (SocketAddr, SocketAddr) {
        (self.src, self.dst)
    }

    /// The message [`Protocol`].
    pub fn protocol(&self) -> &Protocol {
        &self.sent.protocol
    }

    /// Schedule the message for delivery the next time the simulation steps,
    /// consuming the item.
    pub fn deliver(self) {
        self.sent.deliver(self.now);
    }
}

impl<'a> Iterator for LinksIter<'a> {
    type Item = LinkIter<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (pair, link) = self.iter.next()?;

        Some(LinkIter {
            a: pair.0,
            b: pair.1,
            now: link.now,
            iter: link.sent.iter_mut(),
        })
    }
}

impl<'a> Iterator for LinkIter<'a> {
    type Item = SentRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let sent = self.iter.next()?;

        Some(SentRef {
            src: sent.src,
            dst: sent.dst,
            now: self.now,
            sent,
        })
    }
}

/// A two-way link between two hosts on the network.
struct Link {
    /// The state of the link from node 'a' to node 'b'.
    /// Of the two nodes attached to a link, 'a' is the
    /// one whose ip address sorts smallest.
    state_a_b: State,
    /// The state of the link from node 'b' to node 'a'.
    /// Of the two nodes attached to a link, 'b' is the
    /// one whose ip address sorts greatest.
    state_b_a: State,

    /// Optional, per-link configuration.
    config: config::Link,

    /// Sent messages that are either scheduled for delivery in the future
    /// or are on hold.
    sent: VecDeque<Sent>,

    /// Messages that are ready to be delivered.
    deliverable: Map<IpAddr, VecDeque<Envelope>>,

    /// The current network time, moved forward with [`Link::tick`].
    now: Instant,
}

/// States that a link between two nodes can be in.
#[derive(Clone, Copy)]
enum State {
    /// The link is healthy.
    Healthy,

    /// The link was explicitly partitioned.
    ExplicitPartition,

    /// The link was randomly partitioned.
    RandPartition,

    /// Messages are being held indefinitely.
    Hold,
}

impl Topology {
    pub(crate) fn new(config: config::Link) -> Topology {
        Topology {
            config,
            links: Map::default(),
            links_by_host: Map::default(),
            // A runtime's paused clock starts on a whole millisecond of
            // the real clock (see `rt::init`); the topology's starts where
            // its runtime's used to.
            now: Rt::no_software().now(),
        }
    }

    /// Register a link between two hosts
    pub(crate) fn register(&mut self, a: IpAddr, b: IpAddr) {
        let pair = Pair::new(a, b);
        let (index, previous) = self.links.insert_full(pair, Link::new(self.now));
        assert!(previous.is_none());
        for host in [a, b] {
            let indices = self.links_by_host.entry(host).or_default();
            debug_assert!(indices.last().is_none_or(|last| *last < index));
            indices.push(index);
        }
    }

    pub(crate) fn set_max_message_latency(&mut self, value: Duration) {
        self.config.latency_mut().max_message_latency = value;
    }

    pub(crate) fn set_link_message_latency(&mut self, a: IpAddr, b: IpAddr, value: Duration) {
        let pair = Pair::new(a, b);
        let latency = self
            .links
            .get_mut(&pair)
            .unwrap_or_else(|| panic!("unable to find link between {pair:?}"))
            .latency(self.config.latency());
        latency.min_message_latency = value;
        latency.max_message_latency = value;
    }

    pub(crate) fn set_link_max_message_latency(&mut self, a: IpAddr, b: IpAddr, value: Duration) {
        let pair = Pair::new(a, b);
        self.links
            .get_mut(&pair)
            .unwrap_or_else(|| panic!("unable to find link between {pair:?}"))
            .latency(self.config.latency())
            .max_message_latency = value;
    }

    pub(crate) fn set_message_latency_curve(&mut self, value: f64) {
        self.config.latency_mut().latency_distribution = Exp::new(value).unwrap();
    }

    pub(crate) fn set_fail_rate(&mut self, value: f64) {
        self.config.message_loss_mut().fail_rate = value;
    }

    pub(crate) fn set_link_fail_rate(&mut self, a: IpAddr, b: IpAddr, value: f64) {
        let pair = Pair::new(a, b);
        self.links
            .get_mut(&pair)
            .unwrap_or_else(|| panic!("unable to find link between {pair:?}"))
            .message_loss(self.config.message_loss())
            .fail_rate = value;
    }

    // Send a `message` from `src` to `dst`. This method returns immediately,
    // and message delivery happens at a later time (or never, if the link is
    // broken).
    pub(crate) fn enqueue_message(
        &mut self,
        rand: &mut dyn RngCore,
        src: SocketAddr,
        dst: SocketAddr,
        message: Protocol,
    ) -> Result<()> {
        if let Some(link) = self.links.get_mut(&Pair::new(src.ip(), dst.ip())) {
            link.enqueue_message(&self.config, rand, src, dst, message)
        } else {
            Err(Error::new(
                ErrorKind::ConnectionRefused,
                "Connection refused",
            ))
        }
    }

    // Move messages from any network links to the `dst` host.
    pub(crate) fn deliver_messages(&mut self, rand: &mut dyn RngCore, dst: &mut Host) {
        // The same links in the same order as a walk over every link that
        // keeps those touching `dst`.
        let Some(indices) = self.links_by_host.get(&dst.addr) else {
            return;
        };
        for &index in indices {
            let (pair, link) = self
                .links
                .get_index_mut(index)
                .expect("links are never removed");
            debug_assert!(pair.0 == dst.addr || pair.1 == dst.addr);
            link.deliver_messages(&self.config, rand, dst);
        }
    }

    pub(crate) fn hold(&mut self, a: IpAddr, b: IpAddr) {
        self.get_link_mut(&Pair::new(a, b)).hold();
    }

    pub(crate) fn release(&mut self, a: IpAddr, b: IpAddr) {
        self.get_link_mut(&Pair::new(a, b)).release();
    }

    pub(crate) fn partition(&mut self, a: IpAddr, b: IpAddr) {
        self.get_link_mut(&Pair::new(a, b)).explicit_partition();
    }

    pub(crate) fn partition_oneway(&mut self, a: IpAddr, b: IpAddr) {
        let link = &mut self.get_link_mut(&Pair::new(a, b));
        link.partition_oneway(a, b);
    }

    pub(crate) fn repair(&mut self, a: IpAddr, b: IpAddr) {
        self.get_link_mut(&Pair::new(a, b)).explicit_repair();
    }

    pub(crate) fn repair_oneway(&mut self, a: IpAddr, b: IpAddr) {
        let link = &mut self.get_link_mut(&Pair::new(a, b));
        link.repair_oneway(a, b);
    }

    pub(crate) fn tick_by(&mut self, duration: Duration) {
        self.now += duration;
        for link in self.links.values_mut() {
            link.tick(self.now);
        }
    }

    pub(crate) fn iter_mut(&mut self) -> LinksIter<'_> {
        LinksIter {
            iter: self.links.iter_mut(),
        }
    }

    #[inline]
    fn get_link_mut(&mut self, pair: &Pair) -> &mut Link {
        self.links
            .get_mut(pair)
            .unwrap_or_else(|| panic!("unable to find link between {pair:?}"))
    }
}

/// Represents a message sent between two hosts on the network.
struct Sent {
    src: SocketAddr,
    dst: SocketAddr,
    status: DeliveryStatus,
    protocol: Protocol,
}

impl Sent {
    fn deliver(&mut self, now: Instant) {
        self.status = DeliveryStatus::DeliverAfter(now);
    }
}

enum DeliveryStatus {
    DeliverAfter(Instant),
    Hold,
}

impl Link {
    fn new(now: Instant) -> Link {
        Link {
            state_a_b: State::Healthy,
            state_b_a: State::Healthy,
            config: config::Link::default(),
            sent: VecDeque::new(),
            deliverable: Map::default(),
            now,
        }
    }

    fn enqueue_message(
        &mut self,
        global_config: &config::Link,
        rand: &mut dyn RngCore,
        src: SocketAddr,
        dst: SocketAddr,
        message: Protocol,
    ) -> Result<()> {
        tracing::trace!(target: TRACING_TARGET, ?src, ?dst, protocol = %message, "Send");

        self.rand_partition_or_repair(global_config, rand);
        let result = self.enqueue(global_config, rand, src, dst, message);
        self.process_deliverables();
        result
    }

    fn get_state_for_message(&self, src: IpAddr, dst: IpAddr) -> State {
        // Between each pair of ip-addresses there can exist a link.
        // A link between two such pairs can be constructed as
        // Pair::new(x,y) or Pair::new(y,x). These two expressions create
        // the exact same link. We denote one of the ends of the link as 'a',
        // and the other 'b'. 'a' is always the one that compares smaller, i.e,
        // `a < b` holds.
        if src < dst {
            self.state_a_b
        } else {
            self.state_b_a
        }
    }

    // src -> link -> dst
    //        ^-- you are here!
    //
    // Messages may be dropped, sit on the link for a while (due to latency, or
    // because the link has stalled), or be delivered immediately.
    // Link will return an Err(()) if the socket buffer is full.
    fn enqueue(
        &mut self,
        global_config: &config::Link,
        rand: &mut dyn RngCore,
        src: SocketAddr,
        dst: SocketAddr,
        message: Protocol,
    ) -> Result<()> {
        let state = self.get_state_for_message(src.ip(), dst.ip());
        let status = match state {
            State::Healthy => {
                let delay = self.delay(global_config.latency(), rand);
                DeliveryStatus::DeliverAfter(self.now + delay)
            }
            // Only A->B is blocked, so B can send, so we can send if src is B
            State::Hold => {
                tracing::trace!(target: TRACING_TARGET,?src, ?dst, protocol = %message, "Hold");
                DeliveryStatus::Hold
            }
            _ => {
                tracing::trace!(target: TRACING_TARGET,?src, ?dst, protocol = %message, "Drop");
                return Ok(());
            }
        };

        let sent = Sent {
            src,
            dst,
            status,
            protocol: message,
        };

        self.sent.push_back(sent);
        Ok(())
    }

    fn tick(&mut self, now: Instant) {
        self.now = now;
        self.process_deliverables();
    }

    fn process_deliverables(&mut self) {
        // TODO: `drain_filter` is not yet stable, and so we have a low quality
        // implementation here that avoids clones.
        let mut deliverable = 0;
        for i in 0..self.sent.len() {
            let index = i - deliverable;
            let sent = &self.sent[index];
            if let DeliveryStatus::DeliverAfter(time) = sent.status {
                if time <= self.now {
                    let sent = self.sent.remove(index).unwrap();
                    let envelope = Envelope {
                        src: sent.src,
                        dst: sent.dst,
                        message: sent.protocol,
                    };
                    self.deliverable
                        .entry(sent.dst.ip())
                        .or_default()
                        .push_back(envelope);
                    deliverable += 1;
                }
            }
        }
    }

    // FIXME: This implementation does not respect message delivery order. If
    // host A and host B are ordered (by addr), and B sends before A, then this
    // method will deliver A's message before B's.
    fn deliver_messages(
        &mut self,
        global_config: &config::Link,
        rand: &mut dyn RngCore,
        host: &mut Host,
    ) {
        // Nothing ready for this host (most links, most steps): no queue to
        // create and no buffer to allocate. The map is only ever looked up by
        // key, so whether an empty queue exists changes nothing.
        let deliverable = match self.deliverable.get_mut(&host.addr) {
            Some(queue) if !queue.is_empty() => queue.drain(..).collect::<Vec<Envelope>>(),
            _ => return,
        };

        for message in deliverable {
            let (src, dst) = (message.src, message.dst);
            if let Err(message) = host.receive_from_network(message) {
                let _ = self.enqueue_message(global_config, rand, dst, src, message);
            }
        }
    }

    // Randomly break or repair this link.
    fn rand_partition_or_repair(&mut self, global_config: &config::Link, rand: &mut dyn RngCore) {
        let do_rand = self.rand_partition(global_config.message_loss(), rand);
        match (self.state_a_b, self.state_b_a) {
            (State::Healthy, _) | (_, State::Healthy) if do_rand => {
                self.state_a_b = State::RandPartition;
                self.state_b_a = State::RandPartition;

                self.sent.clear();
            }
            (State::RandPartition, _) | (_, State::RandPartition)
                if self.rand_repair(global_config.message_loss(), rand) =>
            {
                self.release();
            }
            _ => {}
        }
    }

    fn hold(&mut self) {
        self.state_a_b = State::Hold;
        self.state_b_a = State::Hold;

        for sent in &mut self.sent {
            sent.status = DeliveryStatus::Hold;
        }
    }

    // This link becomes healthy, and any held messages are scheduled for delivery.
    fn release(&mut self) {
        self.state_a_b = State::Healthy;
        self.state_b_a = State::Healthy;
        for sent in &mut self.sent {
            if let DeliveryStatus::Hold = sent.status {
                sent.deliver(self.now);
            }
        }
    }

    fn explicit_partition(&mut self) {
        self.state_a_b = State::ExplicitPartition;
        self.state_b_a = State::ExplicitPartition;

        self.sent.clear();
    }

    fn partition_oneway(&mut self, from: IpAddr, to: IpAddr) {
        if from < to {
            self.state_a_b = State::ExplicitPartition;
        } else {
            self.state_b_a = State::ExplicitPartition;
        }

        self.sent.retain(|sent| sent.src.ip() != from);
    }

    fn repair_oneway(&mut self, from: IpAddr, to: IpAddr) {
        if from < to {
            self.state_a_b = State::Healthy;
        } else {
            self.state_b_a = State::Healthy;
        }
    }

    // Repair the link, without releasing any held messages.
    fn explicit_repair(&mut self) {
        self.state_a_b = State::Healthy;
        self.state_b_a = State::Healthy;
    }

    /// Should the link be randomly partitioned
    fn rand_partition(&self, global: &config::MessageLoss, rand: &mut dyn RngCore) -> bool {
        let config = self.config.message_loss.as_ref().unwrap_or(global);
        let fail_rate = config.fail_rate;
        fail_rate > 0.0 && rand.random_bool(fail_rate)
    }

    fn rand_repair(&self, global: &config::MessageLoss, rand: &mut dyn RngCore) -> bool {
        let config = self.config.message_loss.as_ref().unwrap_or(global);
        let repair_rate = config.repair_rate;
        repair_rate > 0.0 && rand.random_bool(repair_rate)
    }

    fn delay(&self, global: &config::Latency, rand: &mut dyn RngCore) -> Duration {
        let config = self.config.latency.as_ref().unwrap_or(global);

        let mult = config.latency_distribution.sample(rand);
        let range = (config.max_message_latency - config.min_message_latency).as_millis() as f64;
        let delay = config.min_message_latency + Duration::from_millis((range * mult) as _);

        std::cmp::min(delay, config.max_message_latency)
    }

    fn latency(&mut self, global: &config::Latency) -> &mut config::Latency {
        self.config.latency.get_or_insert_with(|| global.clone())
    }

    fn message_loss(&mut self, global: &config::MessageLoss) -> &mut config::MessageLoss {
        self.config
            .message_loss
            .get_or_insert_with(|| global.clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Link;

    use super::*;

    #[test]
    #[should_panic(expected = "unable to find link between Pair(10.0.0.1, 192.168.0.1)")]
    fn link_access_gives_useful_panic_message() {
        let mut topo = Topology::new(Link::default());
        topo.hold("10.0.0.1".parse().unwrap(), "192.168.0.1".parse().unwrap());
    }

    use crate::host::HostTimer;
    use crate::net::UdpSocket;
    use bytes::Bytes;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const PORT: u16 = 9000;

    /// A host with one bound UDP socket, to see what was delivered to it.
    struct TestHost {
        host: Host,
        socket: UdpSocket,
    }

    /// The builder's defaults: latency 0..100 ms, no message loss.
    fn link_config() -> Link {
        Link {
            latency: Some(Default::default()),
            message_loss: Some(Default::default()),
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, n])
    }

    fn new_host(n: u8) -> TestHost {
        let addr = ip(n);
        #[cfg(feature = "unstable-fs")]
        let mut host = Host::new(
            format!("host-{n}"),
            addr,
            HostTimer::new(Duration::ZERO, Duration::ZERO),
            49152..=65535,
            64,
            1024,
            crate::fs::FsConfig::default(),
        );
        #[cfg(not(feature = "unstable-fs"))]
        let mut host = Host::new(
            format!("host-{n}"),
            addr,
            HostTimer::new(Duration::ZERO, Duration::ZERO),
            49152..=65535,
            64,
            1024,
        );
        let socket = host.udp.bind((addr, PORT).into()).unwrap();
        TestHost { host, socket }
    }

    /// Adds a host the way `World::register` does: one link to each existing
    /// host, in the existing hosts' order.
    fn register(topo: &mut Topology, hosts: &mut Vec<TestHost>, n: u8) {
        for existing in hosts.iter() {
            topo.register(existing.host.addr, ip(n));
        }
        hosts.push(new_host(n));
    }

    fn send(topo: &mut Topology, rng: &mut SmallRng, src: IpAddr, dst: IpAddr, payload: &[u8]) {
        let message = Protocol::Udp(crate::envelope::Datagram(Bytes::copy_from_slice(payload)));
        topo.enqueue_message(rng, (src, PORT).into(), (dst, PORT).into(), message)
            .unwrap();
    }

    /// Everything queued on the host's socket: (source, payload).
    fn received(host: &TestHost) -> Vec<(IpAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = [0; 64];
        while let Ok((len, origin)) = host.socket.try_recv_from(&mut buf) {
            out.push((origin.ip(), buf[..len].to_vec()));
        }
        out
    }

    /// What `Topology::deliver_messages` did before `links_by_host`: walk
    /// every link of the mesh, in registration order, and keep those that
    /// touch `dst`.
    fn deliver_full_scan(topo: &mut Topology, rand: &mut dyn RngCore, dst: &mut Host) {
        for (pair, link) in topo.links.iter_mut() {
            if pair.0 == dst.addr || pair.1 == dst.addr {
                link.deliver_messages(&topo.config, rand, dst);
            }
        }
    }

    /// The positions of the links touching `addr`, found by scanning them all.
    fn scanned_indices(topo: &Topology, addr: IpAddr) -> Vec<usize> {
        topo.links
            .keys()
            .enumerate()
            .filter(|(_, pair)| pair.0 == addr || pair.1 == addr)
            .map(|(index, _)| index)
            .collect()
    }

    #[test]
    fn links_by_host_matches_a_scan_of_every_link() {
        let mut topo = Topology::new(link_config());
        let mut hosts = Vec::new();
        // Registered out of address order, so link order and address order differ.
        for n in [3, 1, 6, 2, 5, 4] {
            register(&mut topo, &mut hosts, n);
            for host in &hosts {
                let addr = host.host.addr;
                let indexed = topo.links_by_host.get(&addr).cloned().unwrap_or_default();
                assert_eq!(indexed, scanned_indices(&topo, addr), "host {addr}");
                assert_eq!(indexed.len(), hosts.len() - 1, "host {addr}");
            }
        }
        assert_eq!(topo.links.len(), 6 * 5 / 2);
    }

    /// Two topologies driven by the same operations and the same rng seeds,
    /// one delivering through `links_by_host`, the other through a scan of
    /// every link: every host must receive the same messages in the same
    /// order, including a host registered halfway through.
    #[test]
    fn delivers_like_the_full_mesh_scan() {
        let mut indexed = (Topology::new(link_config()), Vec::new());
        let mut scanned = (Topology::new(link_config()), Vec::new());
        let mut net_rng = [SmallRng::seed_from_u64(7), SmallRng::seed_from_u64(7)];
        let mut driver = SmallRng::seed_from_u64(11);
        let mut logs: [Vec<(IpAddr, IpAddr, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
        let mut sent = 0;

        for n in [4, 2, 5, 1] {
            register(&mut indexed.0, &mut indexed.1, n);
            register(&mut scanned.0, &mut scanned.1, n);
        }

        for round in 0..60u8 {
            if round == 20 {
                register(&mut indexed.0, &mut indexed.1, 3);
                register(&mut scanned.0, &mut scanned.1, 3);
            }
            let count = indexed.1.len();
            for seq in 0..6u8 {
                let src = driver.random_range(0..count);
                let dst = (src + driver.random_range(1..count)) % count;
                let (src, dst) = (indexed.1[src].host.addr, indexed.1[dst].host.addr);
                let payload = [round, seq];
                send(&mut indexed.0, &mut net_rng[0], src, dst, &payload);
                send(&mut scanned.0, &mut net_rng[1], src, dst, &payload);
                sent += 1;
            }
            // Less than the latency's spread, so deliveries straddle rounds.
            let tick = Duration::from_millis(driver.random_range(1..30));
            let last = round == 59;
            for (i, (topo, hosts)) in [&mut indexed, &mut scanned].into_iter().enumerate() {
                topo.tick_by(if last { Duration::from_secs(1) } else { tick });
                for host in hosts.iter_mut() {
                    if i == 0 {
                        topo.deliver_messages(&mut net_rng[i], &mut host.host);
                    } else {
                        deliver_full_scan(topo, &mut net_rng[i], &mut host.host);
                    }
                    for (src, payload) in received(host) {
                        logs[i].push((host.host.addr, src, payload));
                    }
                }
            }
        }

        assert_eq!(logs[1].len(), sent, "the reference lost messages");
        assert_eq!(logs[0], logs[1]);
    }

    /// Held and partitioned messages on a host's last link still reach it once
    /// the link is released or repaired.
    #[test]
    fn hold_release_and_partition_repair_still_deliver() {
        let mut config = link_config();
        config.latency_mut().min_message_latency = Duration::from_millis(10);
        config.latency_mut().max_message_latency = Duration::from_millis(10);
        let mut topo = Topology::new(config);
        let mut hosts = Vec::new();
        for n in 1..=4 {
            register(&mut topo, &mut hosts, n);
        }
        let mut rng = SmallRng::seed_from_u64(3);
        let (a, b, c, d) = (ip(1), ip(2), ip(3), ip(4));
        // (c, d) is the last link registered, the last of d's.
        let step = |topo: &mut Topology, rng: &mut SmallRng, hosts: &mut Vec<TestHost>| {
            topo.tick_by(Duration::from_millis(10));
            topo.deliver_messages(rng, &mut hosts[3].host);
            received(&hosts[3])
        };

        topo.hold(c, d);
        send(&mut topo, &mut rng, c, d, b"held");
        send(&mut topo, &mut rng, a, d, b"a");
        send(&mut topo, &mut rng, b, d, b"b");
        let got = step(&mut topo, &mut rng, &mut hosts);
        assert_eq!(got, vec![(a, b"a".to_vec()), (b, b"b".to_vec())]);

        topo.release(c, d);
        let got = step(&mut topo, &mut rng, &mut hosts);
        assert_eq!(got, vec![(c, b"held".to_vec())]);

        topo.partition(c, d);
        send(&mut topo, &mut rng, c, d, b"dropped");
        send(&mut topo, &mut rng, a, d, b"a2");
        let got = step(&mut topo, &mut rng, &mut hosts);
        assert_eq!(got, vec![(a, b"a2".to_vec())]);

        topo.repair(c, d);
        send(&mut topo, &mut rng, c, d, b"repaired");
        send(&mut topo, &mut rng, b, d, b"b2");
        let got = step(&mut topo, &mut rng, &mut hosts);
        assert_eq!(got, vec![(b, b"b2".to_vec()), (c, b"repaired".to_vec())]);
    }
}
