//! The payment provider behind the Payment service, as a port.
//!
//! Payment is the saga's pivot: once a provider approved an order, the saga
//! only goes forward. The default [`SimulatedGateway`] declines by rules a
//! test can drive (an amount limit, a declining payment method) and, when
//! asked, by a failure rate. The rate is drawn from the caller's seed and the
//! order id, not from a generator whose state depends on call order, so a
//! retried or replayed step sees the same decision.

use super::ids::{OrderId, UserId};

/// What Payment asks the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest<'a> {
    pub order_id: &'a OrderId,
    pub user_id: &'a UserId,
    pub amount: i64,
    pub method: &'a str,
}

/// The provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentDecision {
    Approved,
    Declined { reason: String },
}

/// A payment provider. Implementations must decide the same way for the same
/// request, since a step may run again after an aborted transaction.
pub trait PaymentGateway: Send + Sync {
    fn authorize(&self, request: &PaymentRequest<'_>) -> PaymentDecision;
}

/// The payment method that [`SimulatedGateway`] always declines.
pub const DECLINING_METHOD: &str = "DECLINED_CARD";

/// The default payment method of an order that names none.
pub const DEFAULT_METHOD: &str = "WALLET";

/// A deterministic stand-in for a real provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedGateway {
    /// Payments above this amount (minor units) are declined.
    pub amount_limit: i64,
    /// Failure rate in parts per million, drawn per order from `seed`.
    pub failure_rate_ppm: u32,
    pub seed: u64,
}

impl Default for SimulatedGateway {
    fn default() -> Self {
        SimulatedGateway {
            amount_limit: 1_000_000,
            failure_rate_ppm: 0,
            seed: 0,
        }
    }
}

impl PaymentGateway for SimulatedGateway {
    fn authorize(&self, request: &PaymentRequest<'_>) -> PaymentDecision {
        if request.method == DECLINING_METHOD {
            return PaymentDecision::Declined {
                reason: format!("payment method {DECLINING_METHOD} was declined"),
            };
        }
        if request.amount > self.amount_limit {
            return PaymentDecision::Declined {
                reason: format!(
                    "amount {} exceeds the limit {}",
                    request.amount, self.amount_limit
                ),
            };
        }
        let draw = mix(self.seed ^ fnv1a(request.order_id.as_str().as_bytes())) % 1_000_000;
        if draw < u64::from(self.failure_rate_ppm) {
            return PaymentDecision::Declined {
                reason: "provider declined the payment".to_string(),
            };
        }
        PaymentDecision::Approved
    }
}

/// FNV-1a: a stable hash of the order id (std's hasher is randomly keyed).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads the bits of the seeded hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(order: &'a OrderId, user: &'a UserId, amount: i64, method: &'a str) -> PaymentRequest<'a> {
        PaymentRequest {
            order_id: order,
            user_id: user,
            amount,
            method,
        }
    }

    #[test]
    fn declines_by_rule() {
        let g = SimulatedGateway {
            amount_limit: 100,
            ..Default::default()
        };
        let (o, u) = (OrderId::parse("o").unwrap(), UserId::parse("u").unwrap());
        assert_eq!(
            g.authorize(&request(&o, &u, 100, DEFAULT_METHOD)),
            PaymentDecision::Approved
        );
        assert!(matches!(
            g.authorize(&request(&o, &u, 101, DEFAULT_METHOD)),
            PaymentDecision::Declined { .. }
        ));
        assert!(matches!(
            g.authorize(&request(&o, &u, 1, DECLINING_METHOD)),
            PaymentDecision::Declined { .. }
        ));
    }

    #[test]
    fn failure_rate_is_per_order_and_roughly_right() {
        let g = SimulatedGateway {
            failure_rate_ppm: 250_000,
            seed: 7,
            ..Default::default()
        };
        let u = UserId::parse("u").unwrap();
        let declined = (0..4000)
            .filter(|i| {
                let o = OrderId::parse(format!("o{i}")).unwrap();
                let first = g.authorize(&request(&o, &u, 1, DEFAULT_METHOD));
                assert_eq!(
                    first,
                    g.authorize(&request(&o, &u, 1, DEFAULT_METHOD)),
                    "same order, same answer"
                );
                first != PaymentDecision::Approved
            })
            .count();
        assert!(
            (800..1200).contains(&declined),
            "25% of 4000 expected, got {declined}"
        );
    }
}
