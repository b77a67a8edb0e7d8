using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Net;

/// <summary>
/// What Kit's Kestrel apps (the inspector, the control API) share: the slim builder with no logging providers, no
/// Server header, and a lifetime that listens to no signal, because the command that owns the gateway decides when it stops.
/// </summary>
internal static class KitWebApp
{
    public static WebApplication Build(Action<KestrelServerOptions> listen)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<IHostLifetime, QuietLifetime>();
        builder.WebHost.UseKestrel(o =>
        {
            o.AddServerHeader = false;
            listen(o);
        });
        return builder.Build();
    }

    public static void Stop(WebApplication app)
    {
        try
        {
            app.StopAsync(TimeSpan.FromSeconds(2)).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is OperationCanceledException or IOException)
        {
        }
        ((IDisposable)app).Dispose();
    }

    private sealed class QuietLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
