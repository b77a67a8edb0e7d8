using Kit.VpnKit.Policy;
using Kit.VpnKit.Stack;

namespace Kit.VpnKit.Nat;

/// <summary>
/// A rule's loss_pct on one TCP flow. Each segment is lost with the rule's probability (a Bernoulli draw, as netem's
/// plain <c>loss</c>), steered so the rule's count of losses never strays more than <see cref="Slack"/> segments from
/// loss_pct of the segments it has seen (<see cref="PolicyRule.Segments"/>, <see cref="PolicyRule.Dropped"/>): when a
/// draw would take it past that, the other outcome is taken. An unsteered draw wanders by the square root of the count
/// (about ±1 point of a 10% setting over 800 segments, one standard deviation), so a short transfer could not show the
/// setting; steered, the share read back is within 2 segments of it, which for 10% is within a tenth of the setting
/// from 200 segments on. Losses stay random in where they fall; only runs are bounded (at 10%, at most about 40
/// segments pass without a loss, and at most three losses come in a row).
/// </summary>
internal sealed class RuleLoss(PolicyRule rule) : ISegmentLoss
{
    /// <summary>How far, in segments, the losses may stray from the setting.</summary>
    public const double Slack = 2;

    public bool Lose()
    {
        double p = rule.Impair.LossPct / 100;
        // The losses owed with this segment counted: positive, behind the setting; negative, ahead of it.
        double owed = (p * (rule.Segments + 1)) - rule.Dropped;
        bool lost = owed > Slack || (owed - 1 >= -Slack && Random.Shared.NextDouble() < p);
        rule.CountSegment(lost);
        return lost;
    }
}
