using Kit.VpnKit.Policy;
using Kit.VpnKit.Stack;

namespace Kit.VpnKit.Nat;

/// <summary>
/// A rule's loss_pct on one TCP flow: each segment is lost with the rule's probability, independently (a Bernoulli
/// draw, as netem's plain <c>loss</c>), and counted on the rule (<see cref="PolicyRule.Segments"/>,
/// <see cref="PolicyRule.Dropped"/>) so the share actually dropped can be read back.
/// </summary>
internal sealed class RuleLoss(PolicyRule rule) : ISegmentLoss
{
    public bool Lose()
    {
        bool lost = Random.Shared.NextDouble() * 100 < rule.Impair.LossPct;
        rule.CountSegment(lost);
        return lost;
    }
}
