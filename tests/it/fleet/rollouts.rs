//! End-to-end rollouts on real nodes (Serf agent + supervisor each): batches, health gating,
//! halt and revert, a node killed mid-rollout and its catching up, dependency order.

