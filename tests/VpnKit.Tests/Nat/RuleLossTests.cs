using Kit.VpnKit.Nat;
using Kit.VpnKit.Policy;

namespace Kit.VpnKit.Tests.Nat;

/// <summary>loss_pct's draw on TCP segments: random where the losses fall, steered so the rule's share tracks the setting.</summary>
public sealed class RuleLossTests
{
    [Theory]
    [InlineData(1.0)]
    [InlineData(10.0)]
    [InlineData(33.3)]
    [InlineData(50.0)]
    [InlineData(100.0)]
    public void TheRulesLossesStayWithinTheSlackOfTheSettingAtEverySegment(double pct)
    {
        var rule = new PolicyRule("lossy", new RuleMatch { Proto = RuleProto.Tcp }, RuleAction.Allow, new Impairment { LossPct = pct });
        // Two flows of one rule draw in turn: the steering is the rule's, over all its flows.
        var flows = new[] { new RuleLoss(rule), new RuleLoss(rule) };
        for (int i = 0; i < 20_000; i++)
        {
            flows[i % 2].Lose();
            Assert.InRange(rule.Dropped - (pct / 100 * rule.Segments), -RuleLoss.Slack - 1e-9, RuleLoss.Slack + 1e-9);
        }
        Assert.Equal(20_000, rule.Segments);
    }

    [Fact]
    public void WhereTheLossesFallIsRandomNotPeriodic()
    {
        var rule = new PolicyRule("lossy", new RuleMatch { Proto = RuleProto.Tcp }, RuleAction.Allow, new Impairment { LossPct = 10 });
        var loss = new RuleLoss(rule);
        var gaps = new HashSet<int>();
        int since = 0;
        int pairs = 0;
        bool previous = false;
        for (int i = 0; i < 20_000; i++)
        {
            bool lost = loss.Lose();
            if (lost)
            {
                gaps.Add(since);
                since = 0;
                pairs += previous ? 1 : 0;
            }
            else
            {
                since++;
            }
            previous = lost;
        }
        // A periodic 1-in-10 would give one gap; independent draws give gaps from 0 to past 20 (and back-to-back losses).
        Assert.True(gaps.Count >= 10, $"gaps seen: {string.Join(',', gaps.Order())}");
        Assert.True(pairs > 0);
    }
}
