using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>How a push ended.</summary>
public enum PushOutcome
{
    /// <summary>The remote branch now has the commit.</summary>
    Pushed,

    /// <summary>The remote branch has commits the local one lacks (git's non-fast-forward or fetch-first): fetch and merge.</summary>
    Rejected,
}

/// <summary>
/// Fetch and push between the store and one remote URL through the git CLI (<see cref="GitCli"/>, which says why the
/// CLI), never under the store lock. Callers check the URL against the operator's <see cref="RemotePolicy"/> first.
/// </summary>
public sealed class RemoteOps(GitCli git)
{
    /// <summary>The private ref a fetched branch lands on: git's own remote-tracking name, so `git log NAME/BRANCH` works in the store.</summary>
    public static string TrackingRef(string remote, string branch) => $"refs/remotes/{remote}/{branch}";

    /// <summary>Where a replicated branch's conflicting remote head is kept until someone merges it (so gc cannot lose it).</summary>
    public static string ConflictRef(string remote, string branch) => $"refs/datakit/conflicts/{remote}/{branch}";

    /// <summary>
    /// Fetches <paramref name="branch"/> from <paramref name="url"/> onto <see cref="TrackingRef"/>; returns the fetched
    /// head, or null when the remote has no such branch. No local branch moves.
    /// </summary>
    /// <exception cref="GitTimeoutException">The time limit passed or <paramref name="ct"/> was cancelled.</exception>
    /// <exception cref="IOException">git failed (unreachable, not a repository, refused): git's reason.</exception>
    public async Task<ObjectId?> FetchAsync(string url, string remote, string branch, CancellationToken ct)
    {
        // The branch name goes into a refspec: BranchName's rules leave no ':', '*' or leading '+' or '-' in it.
        GitStore.CheckBranchName(branch);
        string tracking = TrackingRef(remote, branch);
        // --no-write-fetch-head: concurrent fetches would race on FETCH_HEAD; --no-auto-gc: no repack under libgit2.
        GitResult r = await git.RunAsync(
            ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc", "--no-recurse-submodules", "--", url,
             $"+refs/heads/{branch}:{tracking}"], ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            // "couldn't find remote ref" is git's way to say the branch is not there.
            if (r.StandardError.Contains("couldn't find remote ref", StringComparison.Ordinal))
            {
                return null;
            }
            throw new IOException(r.Reason);
        }
        return await ResolveAsync(tracking, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Pushes local <paramref name="branch"/> to the same name on <paramref name="url"/>, never forced: a remote
    /// branch that moved on is <see cref="PushOutcome.Rejected"/>, not overwritten (two replicas must not lose each other's commits).
    /// </summary>
    public async Task<PushOutcome> PushAsync(string url, string branch, CancellationToken ct)
    {
        GitStore.CheckBranchName(branch);
        GitResult r = await git.RunAsync(
            ["push", "--quiet", "--porcelain", "--no-verify", "--", url, $"refs/heads/{branch}:refs/heads/{branch}"], ct).ConfigureAwait(false);
        if (r.ExitCode == 0)
        {
            return PushOutcome.Pushed;
        }
        // --porcelain prints "!\trefs/heads/b:refs/heads/b\t[rejected] (non-fast-forward)" or "(fetch first)".
        if (r.StandardOutput.Contains("[rejected]", StringComparison.Ordinal))
        {
            return PushOutcome.Rejected;
        }
        throw new IOException(r.Reason);
    }

    /// <summary>Points <paramref name="name"/> at <paramref name="id"/> (or deletes it when null), through git like the rest.</summary>
    public async Task SetRefAsync(string name, ObjectId? id, CancellationToken ct)
    {
        GitResult r = await git.RunAsync(id is null ? ["update-ref", "-d", name] : ["update-ref", name, id.Sha], ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            throw new IOException(r.Reason);
        }
    }

    private async Task<ObjectId?> ResolveAsync(string name, CancellationToken ct)
    {
        GitResult r = await git.RunAsync(["rev-parse", "--verify", "--quiet", name + "^{commit}"], ct).ConfigureAwait(false);
        string sha = r.StandardOutput.Trim();
        return r.ExitCode == 0 && GitStore.TryParseHash(sha, out ObjectId? id, out _) ? id : null;
    }
}
